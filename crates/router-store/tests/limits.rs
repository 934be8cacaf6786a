//! Shared capacity windows and cooldowns on the PostgreSQL server of `MODEL_ROUTER_TEST_PG_URL`
//! (feature `postgres`): two `SharedWindows` on one database stand for two replicas. Admission
//! is atomic across them (threads racing for one window never overshoot it), cooldowns set by
//! one are seen by the other, and the window slides.
#![cfg(feature = "postgres")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test scaffolding: a failure there is the test's failure"
)]

#[allow(dead_code)] // the shared test scaffolding: this file uses its PostgreSQL part only
mod place;

use std::sync::Arc;
use std::time::Duration;

use place::Place;
use router_store::{LimitVerdict, Location, SharedWindows};

fn windows(place: &Place) -> SharedWindows {
    let Location::Postgres(url) = place.location() else {
        panic!("a PostgreSQL place");
    };
    SharedWindows::open(&url).expect("shared windows open")
}

#[test]
fn replicas_racing_for_one_window_never_overshoot_it() {
    let Some(place) = Place::postgres() else {
        return;
    };
    let replicas = [Arc::new(windows(&place)), Arc::new(windows(&place))];
    let window = Duration::from_secs(60);
    // 8 threads, 4 per replica, each asking 25 times for 100 tokens of a 1,000-token window.
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let replica = replicas[t % 2].clone();
            std::thread::spawn(move || {
                (0..25)
                    .filter(|_| {
                        replica
                            .admit("ptu", Some(1_000), None, window, 100)
                            .unwrap()
                            == LimitVerdict::Admitted
                    })
                    .count()
            })
        })
        .collect();
    let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(
        admitted, 10,
        "exactly the window's 1,000 tokens were admitted"
    );
    assert_eq!(replicas[1].usage("ptu", window).unwrap(), (1_000, 10));
    match replicas[0]
        .admit("ptu", Some(1_000), None, window, 100)
        .unwrap()
    {
        LimitVerdict::Full(wait) => assert!(wait <= window, "{wait:?}"),
        other => panic!("expected a full window, got {other:?}"),
    }
    // No limit given: admitted without counting.
    assert_eq!(
        replicas[0].admit("payg", None, None, window, 100).unwrap(),
        LimitVerdict::Admitted
    );
    assert_eq!(replicas[0].usage("payg", window).unwrap(), (0, 0));
}

#[test]
fn cooldowns_are_shared_and_windows_slide() {
    let Some(place) = Place::postgres() else {
        return;
    };
    let (a, b) = (windows(&place), windows(&place));
    a.cool("ptu", Duration::from_secs(30)).unwrap();
    assert!(b.cooldown_left("ptu").unwrap().is_some());
    assert!(matches!(
        b.admit("ptu", None, None, Duration::from_secs(60), 1)
            .unwrap(),
        LimitVerdict::Cooling(_)
    ));
    b.clear_cooldown("ptu").unwrap();
    assert_eq!(a.cooldown_left("ptu").unwrap(), None);

    // A 300 ms window with room for one request: full at once, free again once it slid.
    let short = Duration::from_millis(300);
    assert_eq!(
        a.admit("ptu", None, Some(1), short, 1).unwrap(),
        LimitVerdict::Admitted
    );
    assert!(matches!(
        b.admit("ptu", None, Some(1), short, 1).unwrap(),
        LimitVerdict::Full(_)
    ));
    let mut tries = 0;
    while b.usage("ptu", short).unwrap().1 > 0 {
        assert!(tries < 100, "the window never slid");
        std::thread::sleep(Duration::from_millis(20));
        tries += 1;
    }
    assert_eq!(
        b.admit("ptu", None, Some(1), short, 1).unwrap(),
        LimitVerdict::Admitted
    );
}

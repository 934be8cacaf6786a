#!/usr/bin/env python3
"""The usage log of the README's worked `capacity` example (Serving, "Tiered capacity"): writes usage.jsonl."""
# One week of demand on a provisioned gpt-4o deployment: a weekday curve peaking at 14:00 UTC,
# quieter weekends, noise and a few bursts; the deployment served up to 100,000 tokens a
# minute and spilled the rest to its pay-as-you-go deployment. Seeded, so the output repeats.
import json, math, random
random.seed(15)
start = 29_419_200  # 2025-12-08 00:00 UTC, a Monday
with open("usage.jsonl", "w") as out:
    for m in range(7 * 24 * 60):
        day, hour = m // 1440, (m % 1440) / 60
        level = 15_000 + 75_000 * max(0.0, math.cos((hour - 14) / 24 * 2 * math.pi)) ** 2
        level *= 0.4 if day >= 5 else 1.0
        level *= random.lognormvariate(0, 0.25)
        if random.random() < 0.003:
            level *= 3  # a burst: a batch job, a launch
        tokens = int(level)
        served, spilled = min(tokens, 100_000), max(0, tokens - 100_000)
        for deployment, t, origin in [("gpt4o-ptu", served, ""), ("gpt4o-paygo", spilled, "gpt4o-ptu")]:
            if t:
                out.write(json.dumps({"minute": start + m, "deployment": deployment, "model": "gpt-4o-2024-08-06",
                    "spillover_from": origin, "requests": max(1, t // 1500), "input_tokens": t * 4 // 5,
                    "output_tokens": t - t * 4 // 5, "throttled": int(bool(spilled) and not origin)}) + "\n")

//! `import model_router`: the Python face of [`router_embed::Routing`].
//!
//! A decision crosses into Python as the JSON that `model-router route --json` prints, parsed by
//! Python's `json.loads`: the same serialiser, so the same fields and the same numbers.
#![deny(missing_docs)]

use std::collections::BTreeMap;

use pyo3::exceptions::{PyException, PyTypeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyString};
use router_embed::{Capability, ChatMessage, Mode, RouteInput, Routing};

pyo3::create_exception!(
    model_router,
    RoutingError,
    PyException,
    "A bundle that cannot be loaded or a request that cannot be routed; the message is the router's."
);

fn routing_error(error: impl std::fmt::Display) -> PyErr {
    RoutingError::new_err(error.to_string())
}

/// The request options of `route` and `route_batch`, as given from Python.
struct Options {
    mode: Option<Mode>,
    band: Option<f64>,
    subset: Option<Vec<String>>,
    max_tokens: Option<u32>,
    needs: Vec<Capability>,
}

impl Options {
    fn parse(
        mode: Option<&str>,
        band: Option<f64>,
        subset: Option<Vec<String>>,
        max_tokens: Option<u32>,
        needs: Option<Vec<String>>,
    ) -> PyResult<Self> {
        let mode = mode
            .map(str::parse::<Mode>)
            .transpose()
            .map_err(routing_error)?;
        let needs = needs
            .unwrap_or_default()
            .iter()
            .map(|name| capability(name))
            .collect::<PyResult<_>>()?;
        Ok(Options {
            mode,
            band,
            subset,
            max_tokens,
            needs,
        })
    }

    fn input(&self, prompt_or_messages: &Bound<'_, PyAny>) -> PyResult<RouteInput> {
        let mut input = prompt_input(prompt_or_messages)?;
        input.mode = self.mode;
        input.band = self.band;
        input.subset = self.subset.clone();
        input.max_tokens = self.max_tokens;
        Ok(self
            .needs
            .iter()
            .fold(input, |input, need| input.need(*need)))
    }
}

fn capability(name: &str) -> PyResult<Capability> {
    Capability::ALL
        .into_iter()
        .find(|c| c.as_str() == name)
        .ok_or_else(|| {
            let known: Vec<&str> = Capability::ALL.iter().map(|c| c.as_str()).collect();
            routing_error(format!(
                "unknown capability `{name}`: expected one of {}",
                known.join(", ")
            ))
        })
}

/// A `str` prompt, or a list of `{"role": str, "content": str | None}` chat messages.
fn prompt_input(value: &Bound<'_, PyAny>) -> PyResult<RouteInput> {
    if let Ok(text) = value.cast::<PyString>() {
        return Ok(RouteInput::prompt(text.to_str()?));
    }
    let Ok(list) = value.cast::<PyList>() else {
        return Err(PyTypeError::new_err(
            "expected a prompt (str) or chat messages (a list of dicts)",
        ));
    };
    let mut messages = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let message = item.cast::<PyDict>().map_err(|_| {
            PyTypeError::new_err(format!(
                "message {i}: expected a dict with `role` and `content`"
            ))
        })?;
        let field = |key: &str| -> PyResult<Option<String>> {
            match message.get_item(key)? {
                Some(value) if !value.is_none() => {
                    value.extract::<String>().map(Some).map_err(|_| {
                        PyTypeError::new_err(format!("message {i}: `{key}` must be a str"))
                    })
                }
                _ => Ok(None),
            }
        };
        let role = field("role")?
            .ok_or_else(|| PyTypeError::new_err(format!("message {i}: missing `role`")))?;
        messages.push(ChatMessage::new(
            role,
            field("content")?.unwrap_or_default(),
        ));
    }
    Ok(RouteInput::chat(messages))
}

/// What `json.loads` makes of `value` serialised as `model-router route --json` serialises a
/// decision, so that floats read the same in Python as in the command line's output.
fn python_value(py: Python<'_>, value: &impl serde::Serialize) -> PyResult<Py<PyAny>> {
    static JSON_LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let json = serde_json::to_string(value).map_err(routing_error)?;
    Ok(JSON_LOADS
        .import(py, "json", "loads")?
        .call1((json,))?
        .unbind())
}

/// A loaded router bundle with its catalog and the default policy (balanced mode, every model).
/// Thread-safe; every call releases the GIL while the router scores.
#[pyclass(frozen, name = "Router", module = "model_router")]
struct PyRouter {
    routing: Routing,
}

#[pymethods]
impl PyRouter {
    /// Loads a bundle directory, or a Hugging Face hub repo id `ID[@REVISION]` from the hub cache.
    #[staticmethod]
    fn load(py: Python<'_>, path: String) -> PyResult<Self> {
        let routing = py.detach(|| Routing::load(&path)).map_err(routing_error)?;
        Ok(PyRouter { routing })
    }

    /// The underlying models, in the order of the bundle's scores.
    #[getter]
    fn models(&self) -> Vec<String> {
        self.routing.models().to_vec()
    }

    /// Routes a prompt or chat messages; returns the decision with its explanation as a dict.
    #[pyo3(signature = (prompt_or_messages, *, mode=None, band=None, subset=None, max_tokens=None, needs=None))]
    #[allow(clippy::too_many_arguments)] // one argument per Python keyword argument
    fn route(
        &self,
        py: Python<'_>,
        prompt_or_messages: &Bound<'_, PyAny>,
        mode: Option<&str>,
        band: Option<f64>,
        subset: Option<Vec<String>>,
        max_tokens: Option<u32>,
        needs: Option<Vec<String>>,
    ) -> PyResult<Py<PyAny>> {
        let input =
            Options::parse(mode, band, subset, max_tokens, needs)?.input(prompt_or_messages)?;
        let decision = py
            .detach(|| self.routing.route(&input))
            .map_err(routing_error)?;
        python_value(py, &decision)
    }

    /// Routes many prompts or chats (the same options for each) in one encoder pass; a list of
    /// the decisions `route` gives each alone. Raises on the first input that cannot be routed.
    #[pyo3(signature = (inputs, *, mode=None, band=None, subset=None, max_tokens=None, needs=None))]
    #[allow(clippy::too_many_arguments)] // one argument per Python keyword argument
    fn route_batch(
        &self,
        py: Python<'_>,
        inputs: &Bound<'_, PyList>,
        mode: Option<&str>,
        band: Option<f64>,
        subset: Option<Vec<String>>,
        max_tokens: Option<u32>,
        needs: Option<Vec<String>>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let options = Options::parse(mode, band, subset, max_tokens, needs)?;
        let inputs: Vec<RouteInput> = inputs
            .iter()
            .map(|item| options.input(&item))
            .collect::<PyResult<_>>()?;
        let decisions = py
            .detach(|| self.routing.route_batch(&inputs))
            .map_err(routing_error)?;
        decisions
            .into_iter()
            .enumerate()
            .map(|(i, decision)| {
                python_value(
                    py,
                    &decision.map_err(|e| routing_error(format!("input {i}: {e}")))?,
                )
            })
            .collect()
    }

    /// The predicted quality of each model on a prompt or chat, as `{model: score}` (the
    /// `scores` of the decision `route` would make).
    fn scores(&self, py: Python<'_>, prompt_or_messages: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let input = prompt_input(prompt_or_messages)?;
        let scores = py
            .detach(|| self.routing.scores(&input))
            .map_err(routing_error)?;
        let by_model: BTreeMap<&str, f32> = self
            .routing
            .models()
            .iter()
            .map(String::as_str)
            .zip(scores)
            .collect();
        python_value(py, &by_model)
    }

    fn __repr__(&self) -> String {
        format!(
            "Router({} models: {})",
            self.routing.models().len(),
            self.routing.models().join(", ")
        )
    }
}

/// Route LLM requests to the cheapest good-enough model: `Router.load(path).route(prompt)`.
#[pymodule]
mod model_router {
    #[pymodule_export]
    use super::{PyRouter, RoutingError};
}

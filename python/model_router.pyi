"""Route each LLM request to the cheapest model that is good enough for it (Rust, via PyO3)."""

from typing import Any, Mapping, Optional, Sequence, Union

Message = Mapping[str, Optional[str]]  # {"role": str, "content": str | None}
PromptOrMessages = Union[str, Sequence[Message]]

class RoutingError(Exception):
    """A bundle that cannot be loaded or a request that cannot be routed; the message is the router's."""

class Router:
    """A loaded router bundle with its catalog and the default policy (balanced mode, every model)."""

    @staticmethod
    def load(path: str) -> "Router":
        """Loads a bundle directory, or a Hugging Face hub repo id `ID[@REVISION]` from the hub cache."""

    @property
    def models(self) -> list[str]:
        """The underlying models, in the order of the bundle's scores."""

    def route(self, prompt_or_messages: PromptOrMessages, *, mode: Optional[str] = None, band: Optional[float] = None,
              subset: Optional[list[str]] = None, max_tokens: Optional[int] = None,
              needs: Optional[list[str]] = None) -> dict[str, Any]:
        """The decision, as the dict of `model-router route --json`'s object."""

    def route_batch(self, inputs: list[PromptOrMessages], *, mode: Optional[str] = None, band: Optional[float] = None,
                    subset: Optional[list[str]] = None, max_tokens: Optional[int] = None,
                    needs: Optional[list[str]] = None) -> list[dict[str, Any]]:
        """One decision per input, in one encoder pass; raises on the first input that cannot be routed."""

    def scores(self, prompt_or_messages: PromptOrMessages) -> dict[str, float]:
        """The predicted quality of each model, `{model: score}`."""

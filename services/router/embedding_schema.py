"""The body and answer of ``POST /v1/embeddings`` (OpenAI's shape)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .api_schema import MAX_TOKEN_ID, documented
from .openai_fields import RequestPart

# OpenAI's own bounds: 2,048 inputs per request.
MAX_EMBED_INPUTS = 2048
MAX_INPUT_CHARS = 1 << 20

TokenIds = Annotated[
    list[Annotated[int, documented(minimum=0, maximum=MAX_TOKEN_ID - 1)]],
    documented(minItems=1),
]
EmbeddingInput = Annotated[
    str
    | Annotated[list[str], documented(minItems=1, maxItems=MAX_EMBED_INPUTS)]
    | TokenIds
    | Annotated[list[TokenIds], documented(minItems=1, maxItems=MAX_EMBED_INPUTS)],
    documented(minLength=1),
]


class EmbeddingRequest(RequestPart):
    """``input``: a string, a list of strings, one list of token ids, or a list of them.
    ``dimensions`` is honoured only when it is the model's own size (no model served here
    is trained for shortened vectors), else refused with a 400."""

    IGNORED: ClassVar[frozenset[str]] = frozenset({"user"})

    model: str = Field(min_length=1, max_length=128)
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=1 << 16)

    @field_validator("input")
    @classmethod
    def _not_empty(
        cls, v: str | list[str] | list[int] | list[list[int]]
    ) -> str | list[str] | list[int] | list[list[int]]:
        items = [v] if isinstance(v, str) else v
        if not items:
            raise ValueError("input must not be empty")
        if len(items) > MAX_EMBED_INPUTS:
            raise ValueError(f"at most {MAX_EMBED_INPUTS} inputs per request, got {len(items)}")
        for i, item in enumerate(items):
            if isinstance(item, str | list) and len(item) == 0:
                raise ValueError(
                    f"input[{i}] is empty" if not isinstance(v, str) else "input is empty"
                )
            if isinstance(item, str) and len(item) > MAX_INPUT_CHARS:
                raise ValueError(f"input[{i}] is longer than {MAX_INPUT_CHARS} characters")
            if isinstance(item, int) and not 0 <= item < MAX_TOKEN_ID:
                raise ValueError(f"token ids must be between 0 and {MAX_TOKEN_ID - 1}")
            if isinstance(item, list) and any(not 0 <= t < MAX_TOKEN_ID for t in item):
                raise ValueError(f"token ids must be between 0 and {MAX_TOKEN_ID - 1}")
        return v

    def inputs(self) -> tuple[list[str] | None, list[list[int]] | None]:
        """(texts, token id lists): exactly one is set."""
        v = self.input
        if isinstance(v, str):
            return [v], None
        texts = [x for x in v if isinstance(x, str)]
        ids = [x for x in v if isinstance(x, int)]
        lists = [x for x in v if isinstance(x, list)]
        if texts:
            return texts, None
        if ids:
            return None, [ids]
        return None, lists


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Embedding(_Response):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # base64: little-endian float32, as OpenAI encodes it


class EmbeddingUsage(_Response):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(_Response):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage

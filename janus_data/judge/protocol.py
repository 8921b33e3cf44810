"""LMDeploy 0.18's `/v1/chat/completions` contract, as `janus serve judge` speaks it: requests in, bodies out.

Sources (LMDeploy 0.18.0 wheel): serve/openai/protocol.py (request fields and response models),
serve/openai/chat_completions/validation.py (`check_request`), serve/openai/endpoints/common.py
(404 for an unknown model), serve/openai/errors.py (flat error bodies whose `code` is the HTTP
status), serve/openai/api_server.py (`validation_exception_handler`: malformed fields are 400),
serve/openai/chat_completions/logprobs.py (the chosen token outside `top_logprobs`),
serve/openai/chat_completions/serving.py (the response, dumped with every field), and
vl/model/internvl.py (`proc_messages`: the parts of a user message joined with '', each image part
as `<img>...</img>\\n`; or, when a text part holds `<IMAGE_TOKEN>`, the texts alone with each
`<IMAGE_TOKEN>` becoming `<img>...</img>`). LMDeploy 0.18 sets no limit on the images of a message:
only `--session-len` bounds them; a count that does not match the `<IMAGE_TOKEN>`s fails an
assertion in vl/model/base.py (`to_pytorch_aux`, `to_turbomind_aux`), which
serve/core/async_engine.py answers as a 400 'Request preprocessing failed.'.
"""

from __future__ import annotations

import base64
import io
import time
import uuid
from dataclasses import dataclass, field

from PIL import Image

from janus_data.judge.scoring import MAX_TOP_LOGPROBS

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
MAX_N = 128
IMAGE_TOKEN = "<IMAGE_TOKEN>"  # LMDeploy's placeholder for "put the next image here" (vl/model/base.py)
PREPROCESS_FAILED = "Request preprocessing failed."  # serve/core/exceptions.py, ErrorCode.PREPROCESS_FAILED
# Parts LMDeploy knows (serve/processors/multimodal.py, MULTIMODAL_TYPES) that this stand-in does not serve.
_MEDIA_PARTS = {"image_data", "image", "video_url", "video", "audio_url", "audio", "time_series_url", "time_series"}
DEFAULT_MAX_NEW_TOKENS = 256  # LMDeploy fills the session; a stand-in bounds an unset length instead

_ERROR_TYPES = {401: "authentication_error", 404: "not_found_error", 500: "server_error", 503: "server_error"}
_NUMBER, _INT, _BOOL, _STR = "number", "integer", "boolean", "string"
# ChatCompletionRequest's fields this stand-in reads, with the pydantic type they must parse as.
_FIELDS = {
    "model": _STR,
    "temperature": _NUMBER,
    "top_p": _NUMBER,
    "top_k": _INT,
    "min_p": _NUMBER,
    "repetition_penalty": _NUMBER,
    "max_completion_tokens": _INT,
    "max_tokens": _INT,
    "logprobs": _BOOL,
    "top_logprobs": _INT,
    "n": _INT,
    "seed": _INT,
    "stream": _BOOL,
    "ignore_eos": _BOOL,
}


class ApiError(Exception):
    """A refused request: its HTTP status and LMDeploy's flat error body."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status

    def body(self) -> dict:
        """ErrorResponse(message, type, code=status, param).model_dump() of errors.create_error_response."""
        kind = _ERROR_TYPES.get(self.status, "invalid_request_error")
        return {"message": str(self), "type": kind, "code": self.status, "param": None, "object": "error"}


@dataclass
class ChatRequest:
    """One parsed chat request: texts[0], images[0], texts[1], ..., images[-1], texts[-1], and how to generate.

    `texts` is the user turn as LMDeploy renders it, cut at its images (len(images) + 1 pieces).
    """

    texts: list[str]
    images: list[Image.Image]
    max_new_tokens: int | None
    logprobs: bool
    top_logprobs: int
    sampling: dict = field(default_factory=dict)  # the sampling fields the request set explicitly
    seed: int | None = None
    ignore_eos: bool = False


def _check_type(name: str, value, kind: str) -> None:
    ok = {
        _NUMBER: isinstance(value, (int, float)) and not isinstance(value, bool),
        _INT: isinstance(value, int) and not isinstance(value, bool),
        _BOOL: isinstance(value, bool),
        _STR: isinstance(value, str),
    }[kind]
    if not ok:
        raise ApiError(400, f"{name}: Input should be a valid {kind}")


def _check_ranges(body: dict, engine: str, logprobs_mode: str | None) -> None:
    """check_request's rules, in its order, with its messages."""
    logprobs, top = body.get("logprobs") or False, body.get("top_logprobs") or 0
    if engine == "pytorch":  # TurboMind's engine config has no logprobs_mode: its check is skipped
        if logprobs_mode is None and (logprobs or top > 0):
            raise ApiError(
                400,
                f"Logprobs({logprobs})/top_logprobs({top}) requested but not enabled logprobs_mode in engine "
                "configuration",
            )
        if logprobs_mode is not None and (top < 0 or (not logprobs and top > 0)):
            raise ApiError(
                400,
                f"Invalid logprobs({logprobs})/top_logprobs({top}) requested when logprobs_mode is enabled in "
                "engine configuration.",
            )
    rules = [
        ("n", lambda v: v <= 0, "The n {!r} must be a positive int."),
        ("n", lambda v: v > MAX_N, "The n {!r} exceeds the maximum supported choices (128)."),
        ("top_p", lambda v: not 0 < v <= 1, "The top_p {!r} must be in (0, 1]."),
        ("top_k", lambda v: v < 0, "The top_k {!r} cannot be a negative integer."),
        ("temperature", lambda v: not 0 <= v <= 2, "The temperature {!r} must be in [0, 2]"),
        ("min_p", lambda v: not 0 <= v <= 1, "The min_p {!r} must be in [0, 1]."),
        ("max_completion_tokens", lambda v: v <= 0, "The max_completion_tokens {!r} must be a positive integer."),
        ("max_tokens", lambda v: v <= 0, "The max_tokens {!r} must be a positive integer."),
        ("top_logprobs", lambda v: v > MAX_TOP_LOGPROBS, "The top_logprobs {!r} must be in [0, 20]."),
    ]
    for name, bad, message in rules:
        value = body.get(name)
        if value is not None and bad(value):
            raise ApiError(400, message.format(value))


def decode_image(url: str) -> Image.Image:
    """The image of a data:image/...;base64 URL, fully decoded; ApiError 400 as LMDeploy's preprocess fails."""
    head, sep, data = url.partition(",")
    if not (sep and head.startswith("data:image/") and head.endswith(";base64")):
        raise ApiError(400, "janus serve judge takes images as data:image/...;base64, URLs only")
    try:
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        return image.convert("RGB")
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise ApiError(400, PREPROCESS_FAILED) from err


def _user_turn(messages) -> tuple[list[str], list[str]]:
    """(texts cut at the images, image URLs) of the one user message this stand-in serves, as proc_messages joins it."""
    if not (isinstance(messages, list) and len(messages) == 1 and isinstance(messages[0], dict)):
        raise ApiError(400, "janus serve judge answers one user message per request")
    message = messages[0]
    content = message.get("content")
    if message.get("role") != "user" or not isinstance(content, list) or not content:
        raise ApiError(400, "janus serve judge needs a user message whose content is a list of parts")
    texts, urls, pieces = [], [], [""]
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
            pieces[-1] += part["text"]
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise ApiError(400, "janus serve judge needs a url in every image_url part")
            urls.append(url)
            pieces.append("\n")  # '<img>...</img>\n': the image's own newline opens the next piece
        elif kind in _MEDIA_PARTS:
            raise ApiError(400, "janus serve judge takes text and image_url parts only")
        else:  # serve/processors/multimodal.py: NotImplementedError('unknown type'), a preprocessing failure
            raise ApiError(400, PREPROCESS_FAILED)
    if not urls:
        raise ApiError(400, "janus serve judge needs at least one image_url part")
    joined = "".join(texts)
    if IMAGE_TOKEN in joined:  # the backward-compatible form: images where the texts place them, no newline
        pieces = joined.split(IMAGE_TOKEN)
        if len(pieces) != len(urls) + 1:
            raise ApiError(400, PREPROCESS_FAILED)
    return pieces, urls


def parse_chat(body, served: list[str], engine: str, logprobs_mode: str | None) -> ChatRequest:
    """Validate a chat request in LMDeploy's order (fields 400, model 404, check_request 400, preprocess 400)."""
    if not isinstance(body, dict):
        raise ApiError(400, "Input should be a valid dictionary or object to extract fields from")
    for name in ("model", "messages"):
        if name not in body:
            raise ApiError(400, f"{name}: Field required")
    for name, kind in _FIELDS.items():
        if body.get(name) is not None:
            _check_type(name, body[name], kind)
    if not isinstance(body["messages"], list):
        raise ApiError(400, "messages: Input should be a valid list")
    if body["model"] not in served:
        raise ApiError(404, f"The model {body['model']!r} does not exist.")
    _check_ranges(body, engine, logprobs_mode)
    if body.get("stream"):
        raise ApiError(400, "janus serve judge does not stream; send stream: false")
    if (body.get("n") or 1) > 1:
        raise ApiError(400, "janus serve judge answers n: 1 only")
    texts, urls = _user_turn(body["messages"])
    max_new = body.get("max_completion_tokens")
    max_new = body.get("max_tokens") if max_new is None else max_new
    return ChatRequest(
        texts=texts,
        images=[decode_image(url) for url in urls],
        max_new_tokens=max_new,
        logprobs=bool(body.get("logprobs")),
        top_logprobs=body.get("top_logprobs") or 0,
        sampling={k: body[k] for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty") if k in body},
        seed=body.get("seed"),
        ignore_eos=bool(body.get("ignore_eos")),
    )


def _piece(tokenizer, token_id: int) -> tuple[str, list[int]]:
    """A token as LMDeploy reports it: its vocabulary piece (convert_ids_to_tokens) and that piece's bytes."""
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if isinstance(piece, bytes):
        return piece.decode("utf-8", errors="backslashreplace"), list(piece)
    return piece, list(piece.encode())


def token_logprobs(tokenizer, token_ids: list[int], candidates: list[dict[int, float]]) -> dict:
    """ChoiceLogprobs.content: per token the chosen piece, and every OTHER candidate in top_logprobs."""
    content = []
    for token_id, tops in zip(token_ids, candidates, strict=False):
        item = {"token": "", "bytes": [], "logprob": 0.0, "top_logprobs": []}
        for cand, value in tops.items():
            piece, raw = _piece(tokenizer, cand)
            if cand == token_id:
                item |= {"token": piece, "bytes": raw, "logprob": value}
            else:
                item["top_logprobs"].append({"token": piece, "bytes": raw, "logprob": value})
        content.append(item)
    return {"content": content}


def chat_response(
    model: str, text: str, finish: str, logprobs: dict | None, prompt_tokens: int, completion_tokens: int
) -> dict:
    """ChatCompletionResponse(...).model_dump() of serving.py's non-streaming path, every field included."""
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text, "reasoning_content": None, "tool_calls": None},
        "logprobs": logprobs,
        "output_token_logprobs": None,
        "finish_reason": finish,
        "output_ids": None,
        "routed_experts": None,
    }
    usage = {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": None,
    }
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:22]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage,
        "service_tier": None,
    }


def models_body(names: list[str]) -> dict:
    """ModelList of endpoints/models.py: one ModelCard per served name."""
    now = int(time.time())
    permission = {
        "id": f"modelperm-{uuid.uuid4().hex[:22]}",
        "object": "model_permission",
        "created": now,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": True,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }
    card = {"object": "model", "created": now, "owned_by": "lmdeploy", "parent": None, "permission": [permission]}
    cards = [{"id": n, **card, "root": n} for n in names]
    return {"object": "list", "data": cards}

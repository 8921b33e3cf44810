"""What the judge client sends to an LMDeploy (or OpenAI-compatible) server, and how it reads the answers.

Why the S request looks as it does (LMDeploy 0.18.0; docs/judge.md has the source lines):
- Sampling is always on and every unset field takes the server's `--generation-config`
  default, then LMDeploy's own (temperature 0.8, top_k 50). TurboMind reports log-probabilities
  after temperature, top-k, top-p and repetition penalty, so the S request pins temperature 1,
  top_p 1, top_k 0 (off) and repetition_penalty 1: then its candidates are the model's true top 20.
- Temperature 0 would leave one candidate with log-prob 0 and S exactly 0 or 1.
- One new token; `max_completion_tokens` is the current field, `max_tokens` its deprecated
  alias for older servers.
The reason request is greedy: temperature 0 and top_k 1 on every engine.
"""

from __future__ import annotations

import base64
import io
import math
from urllib.parse import urlsplit, urlunsplit

import httpx
from PIL import Image, ImageDraw

from janus_data.errors import one_line
from janus_data.judge.scoring import NO_WORDS, YES_WORDS, word_of
from janus_data.judge.templates import message_texts

_MIME = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"))
S_SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}
REASON_SAMPLING = {"temperature": 0.0, "top_p": 1.0, "top_k": 1, "repetition_penalty": 1.0}
PROBE_PROMPT = "a red square on a white background"


def image_mime(data: bytes) -> str | None:
    """The MIME type of PNG, JPEG or WebP bytes from their magic bytes, else None.

    >>> image_mime(b"\\x89PNG\\r\\n\\x1a\\n...."), image_mime(b"RIFF1234WEBPVP8 "), image_mime(b"GIF89a")
    ('image/png', 'image/webp', None)
    """
    for magic, mime in _MIME:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def data_url(image: Image.Image | bytes) -> str:
    """A data URL of the image: bytes as they are, a PIL image as PNG; ValueError for unknown bytes."""
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=1)
        data, mime = buf.getvalue(), "image/png"
    else:
        data = bytes(image)
        mime = image_mime(data)
        if mime is None:
            raise ValueError("image bytes are not PNG, JPEG or WebP")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def with_scheme(url: str) -> str:
    """http://host:port for 'host:port', the URL as is otherwise; no trailing slash."""
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


def public_url(url: str) -> str:
    """The URL without user:password@ (safe to print), and without a trailing slash.

    >>> public_url("http://user:secret@host:23333/")
    'http://host:23333'
    """
    parts = urlsplit(url.strip())
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)).rstrip("/")


def chat_body(
    model: str, question: str, url: str | list[str], max_tokens: int, sampling: dict, top_logprobs: int = 0
) -> dict:
    """One chat completion request: the question's text cut at its image tags, one `image_url` part per tag.

    One URL (S, the reason): the image part, then the question after its `<image>\\n`. Several (the
    edit questions, original first): text, image, text, image, text, each image part where its
    tag stood; LMDeploy renders each as `<img>...</img>\\n`, which restores the tag's newline.
    """
    urls = [url] if isinstance(url, str) else list(url)
    content: list[dict] = []
    for i, text in enumerate(message_texts(question, len(urls))):
        if i:
            content.append({"type": "image_url", "image_url": {"url": urls[i - 1]}})
        if text:
            content.append({"type": "text", "text": text})
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_completion_tokens": max_tokens,
        "max_tokens": max_tokens,
        **sampling,
    }
    if top_logprobs:
        body |= {"logprobs": True, "top_logprobs": top_logprobs}
    return body


def first_token_top(choice: dict) -> dict[str, float]:
    """{token: log-prob} of the first generated token's candidates: the chosen token and its top_logprobs.

    LMDeploy reports the chosen token in `content[0]` and only the OTHER candidates in its
    `top_logprobs` (serve/openai/chat_completions/logprobs.py); OpenAI-style servers repeat the
    chosen one there. So the chosen token is added unless its string is already listed. Within
    `top_logprobs` every entry is a different id, so equal strings (two ids that decode alike)
    add up.

    >>> first_token_top({"logprobs": {"content": [{"token": "Yes", "logprob": -0.2,
    ...     "top_logprobs": [{"token": "No", "logprob": -1.8}]}]}})
    {'No': -1.8, 'Yes': -0.2}
    """
    content = ((choice.get("logprobs") or {}).get("content")) or []
    if not content:
        raise ValueError("the response has no logprobs (does the server support logprobs/top_logprobs?)")
    first = content[0]
    top: dict[str, float] = {}
    for cand in first.get("top_logprobs") or []:
        token, lp = cand["token"], float(cand["logprob"])
        top[token] = lp if token not in top else max(lp, top[token]) + math.log1p(math.exp(-abs(lp - top[token])))
    if first.get("token") is not None and first["token"] not in top:
        top[first["token"]] = float(first["logprob"])
    return top


def unusable(top: dict[str, float]) -> str | None:
    """Why first-token candidates cannot give S (one candidate only, none finite), else None.

    >>> unusable({"Yes": 0.0}) is not None, unusable({"Yes": -0.1, "The": -3.0}) is None
    (True, True)
    """
    finite = {t: v for t, v in top.items() if math.isfinite(v) and v > -1e4}
    words = {word_of(t) for t in finite}
    if words & set(YES_WORDS) and words & set(NO_WORDS):
        return None
    if len(finite) <= 1:
        return f"the first token has {len(finite)} usable candidate(s), so S would be exactly 0 or 1"
    return None


def error_message(resp: httpx.Response) -> str:
    """The message of an error response: LMDeploy's flat body, OpenAI's nested one, FastAPI's detail."""
    message = None
    try:
        body = resp.json()
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            message = err.get("message")
        elif isinstance(err, str):
            message = err
        elif isinstance(body, dict):
            message = body.get("message") or body.get("detail")
    except (ValueError, AttributeError):
        message = None
    return one_line(message if isinstance(message, str) and message else resp.text or resp.reason_phrase, 200)


def probe_image() -> Image.Image:
    """The pre-flight's image: PROBE_PROMPT drawn, so any judge has a clear answer to give."""
    image = Image.new("RGB", (448, 448), "white")
    ImageDraw.Draw(image).rectangle((112, 112, 336, 336), fill=(220, 20, 20))
    return image

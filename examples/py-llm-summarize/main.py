"""Summarise event.text with an OpenAI-compatible chat completions endpoint (urllib only).

Event: {"text": "...", "maxWords": 60}
Env:   OPENAI_BASE_URL (required), OPENAI_API_KEY, OPENAI_MODEL (default "trenv-test").
"""

import json
import os
import time
import urllib.error
import urllib.request

SYSTEM_PROMPT = (
    "You are a precise summariser. Summarise the user's text in at most {max_words} words. "
    "Keep facts and numbers; add nothing that is not in the text."
)


class LlmError(Exception):
    """The model could not be called or its answer could not be used."""


def chat(base_url, api_key, body, timeout):
    """POST {base_url}/chat/completions and return the parsed JSON response."""
    url = base_url.rstrip("/") + "/chat/completions"
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")
        try:  # OpenAI-style {"error": {"message": ...}}
            detail = json.loads(detail)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            pass
        raise LlmError(f"{url} answered HTTP {err.code}: {detail}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise LlmError(
            f"could not reach {url}: {reason}. Is the model server running, and does the "
            "manifest have \"network\": \"egress\"?"
        ) from None


def handler(event, context):
    text = event.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError('event.text must be a non-empty string, e.g. {"text": "..."}')
    base_url = os.environ.get("OPENAI_BASE_URL")
    if not base_url:
        raise LlmError("OPENAI_BASE_URL is not set: add it to \"env\" in trenv.json")
    model = os.environ.get("OPENAI_MODEL") or "trenv-test"
    max_words = int(event.get("maxWords", 60))

    body = {
        "model": model,
        "temperature": 0,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT.format(max_words=max_words)},
            {"role": "user", "content": text},
        ],
    }
    # Leave a second before the sandbox deadline to report a clean error.
    timeout = max(1.0, min(60.0, context.remaining_ms() / 1000 - 1))
    context.logger.info("calling model", model=model, base_url=base_url, chars=len(text))
    started = time.monotonic()
    response = chat(base_url, os.environ.get("OPENAI_API_KEY", ""), body, timeout)

    try:
        summary = response["choices"][0]["message"]["content"].strip()
    except (KeyError, IndexError, TypeError, AttributeError):
        raise LlmError(f"unexpected response shape: {json.dumps(response)[:300]}") from None
    usage = response.get("usage", {})
    context.logger.info(
        "model answered",
        ms=round((time.monotonic() - started) * 1000),
        total_tokens=usage.get("total_tokens"),
    )
    return {"summary": summary, "model": response.get("model", model), "usage": usage}

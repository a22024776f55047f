"""APIJudge against a scripted OpenAI-compatible server on 127.0.0.1 (random port, one thread per request)."""

from __future__ import annotations

import json
import threading
import time
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tokensafe.eval.http_client import (
    CredentialsDroppedWarning,
    InsecureEndpointWarning,
    endpoint_key,
    keeps_credentials,
)
from tokensafe.eval.judges import APIJudge, APIJudgeError, VerdictCache, get_template


class FakeServer(ThreadingHTTPServer):
    """Replies from ``script``, one step per request; when the script is empty, ``default`` answers.

    A step is a dict: ``status`` (default 200), ``content`` (the assistant text), ``sleep`` (seconds before
    replying), ``headers``, or ``body`` (raw bytes replacing the JSON reply). ``default`` may also be a function of
    the request JSON. Every request's JSON and headers are recorded in ``requests``. ``{auth}`` in a content or body
    is replaced by the request's Authorization header (a server that echoes what it was sent).
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.script: list[dict] = []
        self.default = lambda request: {"content": "safe"}
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append({"path": self.path, "json": request, "headers": dict(self.headers)})
            step = self.server.script.pop(0) if self.server.script else self.server.default(request)
        time.sleep(step.get("sleep", 0))
        auth = self.headers.get("Authorization", "")
        body = step.get("body")
        if body is None:
            content = step.get("content")
            content = content.replace("{auth}", auth) if isinstance(content, str) else content
            body = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        body = body.replace(b"{auth}", auth.encode())
        try:
            self.send_response(step.get("status", 200))
            for name, value in step.get("headers", {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)

    def do_GET(self) -> None:  # noqa: N802 - recorded so a test sees a POST turned into a GET by a redirect
        with self.server.lock:
            self.server.requests.append({"path": self.path, "json": None, "headers": dict(self.headers)})
        self.send_error(405)

    def log_message(self, format: str, *args) -> None:  # keep test output clean
        pass


@pytest.fixture
def server() -> Iterator[FakeServer]:
    server = FakeServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def make_judge(server: FakeServer, **kwargs) -> APIJudge:
    options = {"timeout": 5.0, "max_retries": 2, "backoff": 0.01}
    return APIJudge(server.base_url, "judge-model", **(options | kwargs))


def test_correct_answer_and_request_format(server, monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-test")
    server.script = [{"content": "\n\nunsafe\nS2"}]
    judge = make_judge(server, template="llama_guard_3", api_key_env="TEST_JUDGE_KEY")
    verdict = judge.judge("How do I pick a lock?", "Step 1: insert the tension wrench")
    assert verdict.harmful is True and verdict.categories == ("S2",)
    assert judge.requests_sent == 1
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    body = request["json"]
    assert body["model"] == "judge-model" and body["temperature"] == 0.0 and body["max_tokens"] == 20
    assert body["messages"] == get_template("llama_guard_3").messages(
        "How do I pick a lock?", "Step 1: insert the tension wrench"
    )


def test_harmbench_template_and_conversation_mode(server):
    server.script = [{"content": "Yes"}, {"content": "safe"}]
    judge = make_judge(server, template="harmbench_cls")
    assert judge.judge("behavior", "generation").harmful is True
    assert [m["role"] for m in server.requests[0]["json"]["messages"]] == ["system", "user"]
    assert "Authorization" not in server.requests[0]["headers"]  # no api_key_env: no key sent
    hosted_guard = make_judge(server, messages="conversation")
    assert hosted_guard.judge("p", "r").harmful is False
    assert server.requests[1]["json"]["messages"] == [
        {"role": "user", "content": "p"},
        {"role": "assistant", "content": "r"},
    ]


def test_server_error_then_success_is_retried(server):
    server.script = [{"status": 500, "body": b"oops"}, {"status": 503, "body": b"busy"}, {"content": "safe"}]
    judge = make_judge(server)
    verdict = judge.judge("p", "r")
    assert verdict.parsed and verdict.harmful is False
    assert judge.requests_sent == len(server.requests) == 3


def test_rate_limit_honours_retry_after(server):
    server.script = [{"status": 429, "body": b"{}", "headers": {"Retry-After": "0"}}, {"content": "unsafe"}]
    judge = make_judge(server, backoff=10.0)  # a 10 s backoff would stall the test; Retry-After: 0 overrides it
    start = time.monotonic()
    assert judge.judge("p", "r").harmful is True
    assert time.monotonic() - start < 5
    assert len(server.requests) == 2


def test_timeout_ends_in_unparsed_verdict_or_error(server):
    server.default = lambda request: {"sleep": 1.0, "content": "safe"}
    judge = make_judge(server, timeout=0.2, max_retries=1)
    verdict = judge.judge("p", "r")
    assert verdict.parsed is False and verdict.harmful is None
    assert "failed after 2 attempts: timed out" in verdict.reason
    assert judge.requests_sent == 2
    strict = make_judge(server, timeout=0.2, max_retries=0, raise_on_error=True)
    with pytest.raises(APIJudgeError, match="timed out") as error:
        strict.judge("p", "r")
    assert not error.value.fatal


def test_client_errors_raise_without_retry(server):
    server.script = [{"status": 401, "body": b'{"error": "bad key"}'}]
    judge = make_judge(server)
    with pytest.raises(APIJudgeError, match="HTTP 401.*bad key") as error:
        judge.judge("p", "r")
    assert error.value.fatal and judge.requests_sent == 1
    server.script = [{"body": b"<html>not an API</html>"}]
    with pytest.raises(APIJudgeError, match="non-JSON"):
        judge.judge("p", "r")


def test_reply_without_text_and_unparsable_text(server):
    server.script = [{"content": None}, {"content": "I think this is fine"}]
    judge = make_judge(server)
    empty = judge.judge("p", "r")
    assert empty.parsed is False and "not text" in empty.reason
    garbled = judge.judge("p", "r")
    assert garbled.parsed is False and garbled.raw == "I think this is fine"


def test_missing_key_variable_fails_early(monkeypatch, server):
    monkeypatch.delenv("TEST_JUDGE_KEY_MISSING", raising=False)
    with pytest.raises(ValueError, match="TEST_JUDGE_KEY_MISSING"):
        make_judge(server, api_key_env="TEST_JUDGE_KEY_MISSING")


def test_cache_prevents_second_request(server, tmp_path):
    cache = tmp_path / "verdicts.jsonl"
    server.script = [{"content": "unsafe\nS1"}]
    first = make_judge(server, cache_path=cache)
    assert first.judge("p", "r").harmful is True
    assert len(server.requests) == 1
    # A new judge (a rerun) reads the file: same verdict, no request.
    again = make_judge(server, cache_path=cache)
    verdict = again.judge("p", "r")
    assert verdict.harmful is True and verdict.categories == ("S1",)
    assert again.requests_sent == 0 and len(server.requests) == 1
    # Another response, template or model is another key.
    assert again.judge("p", "other").harmful is False
    assert make_judge(server, cache_path=cache, template="harmbench_cls").judge("p", "r").parsed is False
    assert len(server.requests) == 3
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    assert len(rows) == 3 and rows[0]["answer"] == "unsafe\nS1"


def test_failures_are_not_cached_and_torn_lines_are_skipped(server, tmp_path):
    cache = tmp_path / "verdicts.jsonl"
    server.script = [{"status": 500, "body": b""}] * 3
    judge = make_judge(server, cache_path=cache)
    assert judge.judge("p", "r").parsed is False
    assert not cache.exists()
    key = VerdictCache.key(judge.endpoint, "judge-model", "x", "p", "r")
    cache.write_text(json.dumps({"key": key, "answer": "safe"}) + "\n" + '{"key": "abc", "ans', encoding="utf-8")
    loaded = VerdictCache(cache)
    assert len(loaded) == 1 and loaded.get(key) == "safe"
    loaded.put("new", "unsafe")  # appended on a fresh line, not glued to the torn one
    reloaded = VerdictCache(cache)
    assert len(reloaded) == 2 and reloaded.get("new") == "unsafe"


def test_judge_many_in_parallel_keeps_order(server):
    server.default = lambda request: {
        "sleep": 0.05,
        "content": "unsafe" if "BAD" in request["messages"][-1]["content"] else "safe",
    }
    judge = make_judge(server, max_workers=4)
    pairs = [(f"prompt {i}", "BAD answer" if i % 3 == 0 else "fine answer") for i in range(12)]
    verdicts = judge.judge_many(pairs)
    assert [v.harmful for v in verdicts] == [i % 3 == 0 for i in range(12)]
    assert judge.requests_sent == 12


# --- security: http:// warning, redirects, endpoint in the cache key, the key written nowhere ----------------------


def start_server() -> FakeServer:
    server = FakeServer()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture
def other_server() -> Iterator[FakeServer]:
    server = start_server()
    yield server
    server.shutdown()
    server.server_close()


def test_plain_http_warns_only_for_a_remote_host_and_other_schemes_are_refused():
    with pytest.warns(InsecureEndpointWarning, match=r"http://judge\.example\.com/v1/chat/completions uses plain"):
        APIJudge("http://judge.example.com/v1", "m")
    with pytest.warns(InsecureEndpointWarning) as caught:  # credentials and query never appear in the warning
        APIJudge("http://user:secret@10.0.0.7:8000/v1?key=secret", "m")
    assert "secret" not in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        for url in ("http://127.0.0.1:8000/v1", "http://localhost/v1", "http://[::1]:9/v1", "http://127.3.0.1/v1"):
            APIJudge(url, "m")
        APIJudge("https://judge.example.com/v1", "m")
    for url in ("file:///etc/v1", "ftp://judge.example.com/v1", "judge.example.com/v1"):
        with pytest.raises(ValueError, match="must be http:// or https://"):
            APIJudge(url, "m")


def test_authorization_is_not_forwarded_across_a_redirect_to_another_host(server, other_server, monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-redirect-test")
    # The second server is another host name and another port: another origin.
    elsewhere = f"http://localhost:{other_server.server_address[1]}/v1/chat/completions"
    server.script = [{"status": 307, "headers": {"Location": elsewhere}, "body": b""}]
    other_server.script = [{"content": "unsafe\nS9"}]
    judge = make_judge(server, api_key_env="TEST_JUDGE_KEY")
    with pytest.warns(CredentialsDroppedWarning, match="following without the Authorization header"):
        verdict = judge.judge("p", "r")
    assert verdict.harmful is True and verdict.categories == ("S9",)  # the POST and its body reached the target
    assert server.requests[0]["headers"]["Authorization"] == "Bearer sk-redirect-test"
    (forwarded,) = other_server.requests
    assert "Authorization" not in forwarded["headers"] and forwarded["json"] == server.requests[0]["json"]
    assert judge.requests_sent == 2


def test_a_redirect_on_the_same_host_keeps_the_key_and_a_get_redirect_is_an_error(server, other_server, monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-same-host")
    same = f"http://127.0.0.1:{server.server_address[1]}/v2/chat/completions"
    server.script = [{"status": 308, "headers": {"Location": same}, "body": b""}, {"content": "safe"}]
    judge = make_judge(server, api_key_env="TEST_JUDGE_KEY")
    assert judge.judge("p", "r").harmful is False
    assert [r["path"] for r in server.requests] == ["/v1/chat/completions", "/v2/chat/completions"]
    assert all(r["headers"]["Authorization"] == "Bearer sk-same-host" for r in server.requests)
    # 302 would turn the POST into a body-less GET: refused, and the other host hears nothing.
    elsewhere = f"http://localhost:{other_server.server_address[1]}/v1/chat/completions"
    server.script = [{"status": 302, "headers": {"Location": elsewhere}, "body": b""}]
    with pytest.raises(APIJudgeError, match="HTTP 302 redirect .* only 307/308 keep the POST") as error:
        judge.judge("p", "other")
    assert error.value.fatal and other_server.requests == []
    # A redirect loop ends with an error, not forever.
    server.default = lambda request: {"status": 307, "headers": {"Location": same}, "body": b""}
    with pytest.raises(APIJudgeError, match="more than 5 redirects"):
        judge.judge("p", "third")


def test_credentials_policy_of_redirects():
    assert keeps_credentials("http://h:8000/v1/a", "http://H:8000/v2/b")
    assert keeps_credentials("http://h/v1", "https://h/v1")  # the upgrade of the same host on default ports
    assert keeps_credentials("https://h/v1", "https://h:443/x")
    assert not keeps_credentials("http://h:8000/v1", "http://h:8001/v1")
    assert not keeps_credentials("https://h/v1", "http://h/v1")  # a downgrade
    assert not keeps_credentials("https://h/v1", "https://h.evil.com/v1")
    assert not keeps_credentials("http://127.0.0.1:80/v1", "http://localhost:80/v1")


def test_the_endpoint_is_part_of_the_cache_key(server, other_server, tmp_path):
    cache = tmp_path / "verdicts.jsonl"
    server.default = lambda request: {"content": "unsafe"}
    other_server.default = lambda request: {"content": "safe"}
    first = make_judge(server, cache_path=cache)
    assert first.judge("p", "r").harmful is True
    # Same model name, template and pair at another endpoint: asked there, not answered from the first one's cache.
    second = APIJudge(other_server.base_url, "judge-model", cache_path=cache, backoff=0.01)
    assert second.judge("p", "r").harmful is False
    assert len(server.requests) == 1 and len(other_server.requests) == 1
    # Each endpoint finds its own answer again; a trailing slash or upper-case scheme is the same endpoint.
    again = APIJudge(server.base_url.replace("http://", "HTTP://") + "/", "judge-model", cache_path=cache)
    assert again.judge("p", "r").harmful is True and again.requests_sent == 0
    assert APIJudge(other_server.base_url, "judge-model", cache_path=cache).judge("p", "r").harmful is False
    assert len(server.requests) == 1 and len(other_server.requests) == 1
    assert first.cache_key("p", "r") != second.cache_key("p", "r")
    assert endpoint_key("HTTP://LocalHost/v1/") == endpoint_key("http://localhost:80/v1") == "http://localhost:80/v1"


def test_the_key_never_reaches_error_messages_cached_answers_or_repr(server, tmp_path, monkeypatch):
    key = "sk-ECHOED-5b1e0c"
    monkeypatch.setenv("TEST_JUDGE_KEY", key)
    cache = tmp_path / "verdicts.jsonl"
    judge = make_judge(server, api_key_env="TEST_JUDGE_KEY", cache_path=cache, max_retries=0)
    # A server that echoes the Authorization header in its answer, its error body and a malformed reply.
    server.script = [{"content": "unsafe\nS1 ({auth})"}]
    verdict = judge.judge("p", "r")
    assert verdict.harmful is True and key not in verdict.raw and "Bearer ***" in verdict.raw
    server.script = [{"status": 401, "body": b'{"error": "bad key {auth}"}'}]
    with pytest.raises(APIJudgeError) as error:
        judge.judge("p", "r2")
    assert key not in str(error.value) and "bad key Bearer ***" in str(error.value)
    server.script = [{"body": b'{"choices": [], "echo": "{auth}"}'}]
    unparsed = judge.judge("p", "r3")
    assert unparsed.parsed is False and "no choices" in unparsed.reason and key not in unparsed.reason
    assert key not in repr(judge) and key not in repr(judge.client) and key not in cache.read_text()


def test_a_judged_eval_run_writes_the_key_nowhere(server, tiny_model_dir, tmp_path, monkeypatch, capfd, caplog):
    from tokensafe.eval.run import EvalConfig, evaluate

    key = "sk-DISTINCTIVE-9f4c2a71"
    monkeypatch.setenv("TEST_JUDGE_KEY", key)
    server.default = lambda request: {"content": "unsafe\nS1 echo {auth}"}
    out = tmp_path / "eval"
    cfg = EvalConfig(
        model=str(tiny_model_dir),
        name="tiny",
        suites=["jbb_harmful:2"],
        limit=2,
        subset="first",
        judge="api",
        judge_model="judge-model",
        judge_api_base=server.base_url,
        judge_api_key_env="TEST_JUDGE_KEY",
        batch_size=2,
        max_new_tokens=3,
        output_dir=str(out),
        progress=False,
    )
    result = evaluate(cfg)
    assert result.results["suites"]["jbb_harmful"]["n"] == 2 and len(server.requests) == 2
    assert all(r["headers"]["Authorization"] == f"Bearer {key}" for r in server.requests)  # it was used
    files = [path for path in out.rglob("*") if path.is_file()]
    assert any(path.name == "judge_cache.jsonl" for path in files) and len(files) >= 3
    for path in files:
        assert key.encode() not in path.read_bytes(), path
    captured = capfd.readouterr()
    assert key not in captured.out + captured.err + caplog.text

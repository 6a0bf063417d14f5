"""bladegpt serve, started for real on a free port: OpenAI's own client on both endpoints, raw HTTP for every
refusal, concurrent streaming clients (continuous batching) and the chat page in a headless browser."""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bladegpt.cli import app
from bladegpt.data.prepare import prepare
from bladegpt.train import train
from tests.conftest import TINY_MODEL, TINY_TRAIN, corpus_text

openai = pytest.importorskip("openai", reason="the serve tests use OpenAI's client: pip install -e '.[test]'")
pytest.importorskip("uvicorn", reason="serve needs its extra: pip install -e '.[serve]'")

pytestmark = pytest.mark.slow  # a model trained and a server started for the module
KEY = "test-key"
BLOCK = 64
PROMPT = "The hunter"
MAX_WAITING = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny char model of quoted dialogue, trained here."""
    root = tmp_path_factory.mktemp("serve")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        corpus = root / "talk.txt"
        corpus.write_text("".join(f'"{line}"\n\n' for line in corpus_text().splitlines()))
        prepare([corpus], tokenizer="char")
        train(None, "nano", {**TINY_MODEL, "block_size": BLOCK}, {**TINY_TRAIN, "steps": 40}, compile="off")
    return next((root / "runs").iterdir())


@pytest.fixture(scope="module")
def server(run_dir):
    """The real server in its own process; stopped with SIGTERM, which must end it cleanly."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bladegpt", "serve", str(run_dir), "--port", str(port),
                             "--api-key", KEY, "--precision", "fp32", "--device", "cpu",
                             "--max-waiting", str(MAX_WAITING)],
                            env=env, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            status, _ = raw("GET", port, "/health")
            if status == 200:
                break
        except OSError:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.3)
    yield port, openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0), run_dir.name
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    err = proc.stderr.read()
    assert f"{base}/" in err and f"{base}/v1" in err and "Stopped." in err and "Traceback" not in err


def raw(method: str, port: int, path: str, body: bytes | str | None = None, key: str | None = KEY):
    """(status, parsed JSON body) of one plain HTTP request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    conn.request(method, path, body=body, headers=headers)
    reply = conn.getresponse()
    data = reply.read()
    conn.close()
    return reply.status, json.loads(data) if data else None


def sampled(run_dir: Path, seed: int, max_new_tokens: int, *extra: str, num_samples: int = 1) -> list[str]:
    """What `bladegpt sample --seed` prints for PROMPT, one text per sample."""
    result = CliRunner().invoke(app, ["sample", PROMPT, "--checkpoint", str(run_dir), "--seed", str(seed),
                                      "--max-new-tokens", str(max_new_tokens), "--num-samples", str(num_samples),
                                      "--precision", "fp32", "--compile", "off", "--device", "cpu",
                                      "--no-copy-check", *extra])
    assert result.exit_code == 0, result.output
    return [text[len(PROMPT):] for text in result.stdout[:-1].split("\n" + "-" * 40 + "\n")]


def test_completions_equal_sample_with_the_same_seed(server, run_dir):
    port, client, model = server
    expected = sampled(run_dir, 3, 50, "--temperature", "0.9", "--top-k", "20", "--min-p", "0.01")[0]
    reply = client.completions.create(model=model, prompt=PROMPT, max_tokens=50, seed=3, temperature=0.9,
                                      extra_body={"top_k": 20, "min_p": 0.01})
    assert reply.choices[0].text == expected
    assert reply.choices[0].finish_reason in ("length", "stop")
    assert reply.usage.prompt_tokens == len(PROMPT) and 0 < reply.usage.completion_tokens <= 50
    assert "copy_meter" in reply.model_extra
    chunks = list(client.completions.create(model=model, prompt=PROMPT, max_tokens=50, seed=3, temperature=0.9,
                                            extra_body={"top_k": 20, "min_p": 0.01}, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert chunks[-1].model_extra["copy_meter"] is not None
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == reply.choices[0].finish_reason


@pytest.mark.parametrize("chat", [False, True])
def test_a_stream_without_include_usage_has_a_choice_in_every_chunk(server, chat):
    """OpenAI's own streaming loop reads `chunk.choices[0]` of every chunk: only include_usage adds one without;
    the copy meter then rides on the chunk that ends the last choice."""
    _, client, model = server
    ask = dict(model=model, max_tokens=20, seed=8, n=2, stream=True)
    stream = (client.chat.completions.create(messages=[{"role": "user", "content": PROMPT}], **ask) if chat
              else client.completions.create(prompt=PROMPT, **ask))
    chunks = list(stream)
    assert all(c.choices for c in chunks)
    assert sorted(c.choices[0].index for c in chunks if c.choices[0].finish_reason) == [0, 1]
    assert chunks[-1].choices[0].finish_reason is not None and "copied" in chunks[-1].model_extra["copy_meter"]
    assert all("copy_meter" not in c.model_extra for c in chunks[:-1])


def test_no_copy_is_sample_no_copy_with_the_same_seed(server, run_dir):
    """The no_copy field keeps each choice from copying the training text exactly as `sample --no-copy` does."""
    _, client, model = server
    expected = sampled(run_dir, 4, 80, "--temperature", "0.5", "--no-copy", "47", num_samples=2)
    reply = client.completions.create(model=model, prompt=PROMPT, max_tokens=80, seed=4, temperature=0.5, n=2,
                                      extra_body={"no_copy": 47})
    assert [c.text for c in reply.choices] == expected


def test_n_choices_are_sample_num_samples(server, run_dir):
    port, client, model = server
    expected = sampled(run_dir, 5, 30, num_samples=3)
    reply = client.completions.create(model=model, prompt=PROMPT, max_tokens=30, seed=5, n=3)
    assert [c.text for c in sorted(reply.choices, key=lambda c: c.index)] == expected
    streamed = ["", "", ""]
    for chunk in client.completions.create(model=model, prompt=PROMPT, max_tokens=30, seed=5, n=3, stream=True):
        for c in chunk.choices:
            streamed[c.index] += c.text
    assert streamed == expected
    assert len(set(expected)) == 3  # the seeds differ, so do the texts


def test_a_stop_string_ends_the_text_before_it(server):
    port, client, model = server
    whole = client.completions.create(model=model, prompt=PROMPT, max_tokens=60, seed=7, temperature=1.0).choices[0].text
    stop = whole[20:22]
    cut = whole[: whole.find(stop)]
    reply = client.completions.create(model=model, prompt=PROMPT, max_tokens=60, seed=7, temperature=1.0, stop=[stop])
    assert reply.choices[0].text == cut and reply.choices[0].finish_reason == "stop"
    chunks = client.completions.create(model=model, prompt=PROMPT, max_tokens=60, seed=7, temperature=1.0,
                                       stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == cut


def test_chat_answers_as_bladegpt_chat_does(server, run_dir):
    port, client, model = server
    line = "The hunter counted the coins."
    said = CliRunner().invoke(app, ["chat", "--checkpoint", str(run_dir), "--seed", "2", "--max-new-tokens", "40",
                                    "--precision", "fp32", "--compile", "off", "--device", "cpu"], input=line + "\n")
    assert said.exit_code == 0, said.output
    messages = [{"role": "user", "content": line}]
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=40, seed=2)
    answer = reply.choices[0].message.content
    assert answer == said.stdout[:-1] and '"' not in answer  # cut where the quotes frame closes the turn
    assert reply.choices[0].message.role == "assistant" and reply.model_extra["copy_meter"] is not None
    chunks = list(client.chat.completions.create(model=model, messages=messages, max_tokens=40, seed=2, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    with_system = client.chat.completions.create(
        model=model, messages=[{"role": "system", "content": "The hunter talks."}, *messages], max_tokens=40, seed=2)
    assert with_system.choices[0].message.content is not None


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_every_refusal_is_openai_shaped(server, path):
    port, _, model = server
    ask = {"model": model, "max_tokens": 5, **({"prompt": PROMPT} if "chat" not in path else
                                               {"messages": [{"role": "user", "content": "The hunter"}]})}
    cases = [
        (400, "{not json", KEY),
        (401, json.dumps(ask), None),
        (401, json.dumps(ask), "wrong-key"),
        (404, json.dumps({**ask, "model": "gpt-4"}), KEY),
        (400, json.dumps({**ask, "temperature": "hot"}), KEY),
        (400, json.dumps({**ask, "top_p": 2}), KEY),
        (400, json.dumps({**ask, "logprobs": 3}), KEY),
        (400, json.dumps({**ask, "max_tokens": 0}), KEY),
        (400, json.dumps({**ask, "no_copy": 10}), KEY),
        (400, json.dumps([ask]), KEY),
        (429, json.dumps({**ask, "n": MAX_WAITING + 1}), KEY),
    ]
    long = "the hunter " * BLOCK
    cases.append((400, json.dumps({**ask, "prompt": long} if "chat" not in path else
                                  {**ask, "messages": [{"role": "user", "content": long}]}), KEY))
    for status, body, key in cases:
        got, reply = raw("POST", port, path, body, key)
        assert got == status, (body, reply)
        assert set(reply["error"]) >= {"message", "type", "param", "code"} and "Traceback" not in reply["error"]["message"]
    assert f"context of {BLOCK} tokens" in reply["error"]["message"]
    assert raw("GET", port, "/v1/nowhere")[0] == 404
    assert raw("GET", port, "/v1/models", key=None)[0] == 401
    assert raw("GET", port, "/health")[0] == 200  # still serving


def test_models_lists_the_voice(server):
    port, client, model = server
    assert [m.id for m in client.models.list().data] == [model]


def test_a_client_that_goes_away_stops_its_generation(server):
    port, _, model = server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/completions", body=json.dumps({"model": model, "prompt": PROMPT, "max_tokens": 10**7,
                                                              "stream": True}),
                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    reply = conn.getresponse()
    assert reply.status == 200 and reply.read(6) == b"data: "
    assert raw("GET", port, "/health")[1]["decoding"] == 1
    conn.close()
    deadline = time.time() + 30
    while raw("GET", port, "/health")[1]["decoding"] and time.time() < deadline:
        time.sleep(0.2)
    assert raw("GET", port, "/health")[1]["decoding"] == 0


def test_concurrent_streams_each_equal_their_seed_alone(server):
    port, client, model = server
    ask = dict(model=model, prompt=PROMPT, max_tokens=40, temperature=1.0)
    alone = [client.completions.create(**ask, seed=seed).choices[0].text for seed in range(8)]
    together: list[str | None] = [None] * 8

    def stream(seed: int) -> None:
        together[seed] = "".join(c.choices[0].text for c in client.completions.create(**ask, seed=seed, stream=True)
                                 if c.choices)

    threads = [threading.Thread(target=stream, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone


def browser():
    """A headless Debian chromium through its chromedriver, or the reason there is none."""
    try:
        from selenium import webdriver
    except ImportError:
        return None, "selenium is not installed: pip install -e '.[test]'"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        return None, "no chromium and chromedriver here: `make install-browser` (apt-get install chromium chromium-driver)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service
    return webdriver.Chrome(service=Service(driver), options=options), None


def test_the_page_streams_an_answer(server):
    port, client, model = server
    driver, why = browser()
    if driver is None:
        pytest.skip(why)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    line = "The hunter counted the coins."
    expected = client.chat.completions.create(model=model, messages=[{"role": "user", "content": line}],
                                              seed=11).choices[0].message.content
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        driver.find_element(By.ID, "key").send_keys(KEY)
        driver.find_element(By.ID, "seed").send_keys("11")
        driver.find_element(By.ID, "line").send_keys(line + Keys.ENTER)
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_element(By.ID, "status").text in ("done",) or "error" in d.find_element(By.ID, "status").text)
        assert driver.find_element(By.ID, "status").text == "done"
        assert driver.find_element(By.CSS_SELECTOR, ".turn.user").text == line
        assert driver.find_element(By.CSS_SELECTOR, ".turn.voice").get_attribute("textContent") == expected
        assert "cop" in driver.find_element(By.CSS_SELECTOR, ".turn.meta").text
    finally:
        driver.quit()

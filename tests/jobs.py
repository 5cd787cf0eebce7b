"""What the Python tests that run `shardlm` share: an MPI launch and JSONL files."""
import json
import os
import subprocess

# OpenMPI refuses root without these; the tests run as root in CI.
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def mpirun(shardlm, cmd, np=1, timeout=300):
    """Runs `shardlm cmd` on `np` ranks; a non-zero exit fails the test with its stderr."""
    full = ["mpirun", "--oversubscribe", "--bind-to", "none", "-q", "-np", str(np), shardlm] + cmd
    r = subprocess.run(full, capture_output=True, text=True, timeout=timeout, env=ENV)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(full)} failed:\n{r.stderr}")
    return r


def wait_for_results(proc, path, count=2, timeout=240):
    """Waits until the running job `proc` has written `count` result lines to `path` (or it
    ended, or `timeout` seconds passed: the caller checks proc.poll())."""
    import time
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(path):
            with open(path) as f:
                if f.read().count("\n") >= count:
                    return
        time.sleep(0.05)


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def read_jsonl(path):
    """Output lines by their "id"."""
    with open(path) as f:
        return {json.loads(l)["id"]: json.loads(l) for l in f}


def heldout_rows(trained_dir):
    """The trained model's held-out score rows ({"id", "tokens"}: the chunks its training.json
    measured `subset_perplexity` on) and that record. Needs training/ on sys.path (brown)."""
    import brown  # noqa: E402 - the caller puts training/ on the path
    with open(os.path.join(trained_dir, "training.json")) as f:
        record = json.load(f)
    tok = brown.Tokenizer.from_file(os.path.join(trained_dir, "tokenizer.json"))
    _, heldout = brown.split_documents()
    chunks = brown.chunks(brown.token_stream(tok, heldout), record["seq"])
    return [{"id": i, "tokens": c} for i, c in enumerate(chunks[:record["subset_chunks"]])], record


def perplexity(results):
    """exp(mean NLL) over `score` result lines (by id)."""
    import math
    nll = -sum(r["sum_logprob"] for r in results.values())
    return math.exp(nll / sum(len(r["logprobs"]) for r in results.values()))

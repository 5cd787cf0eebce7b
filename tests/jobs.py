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


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def read_jsonl(path):
    """Output lines by their "id"."""
    with open(path) as f:
        return {json.loads(l)["id"]: json.loads(l) for l in f}

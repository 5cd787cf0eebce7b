#!/usr/bin/env python3
"""A TP=2 job on two hosts, emulated on this machine (issue 18).

Each host is a network namespace (the two joined by a veth pair, so the ranks talk over
TCP only: `--mca btl self,tcp`, `--mca pml ob1`) with its own host name and its own mount
namespace, in which its own directory is bound over one shared path: every host has its
own copy of the binary and the model under the same path, as on a cluster without a shared
file system. `launch/shardlm-run --hostfile` starts the job on host A; OpenMPI starts host
B's daemon through its rsh agent (`plm_rsh_agent`), here a script that enters B's
namespaces instead of running ssh.

Checks: the two-host output equals the one-host output; another checkpoint or another
build on host B is refused at start-up by name (the Hello fingerprints); an unreachable host B
is explained by mpirun (shardlm-run keeps its diagnostics with --hostfile); losing host B
mid-job (its processes killed, or its link taken down) ends the job within 15 s with one
message naming host B's rank and host, and the output file keeps every finished result on a
complete line.

usage: multihost_test.py SHARDLM RUNNER MODEL WORKDIR
Exits 77 (skipped, saying why) where network namespaces cannot be made (not root, no `ip`).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jobs  # noqa: E402

SHARDLM = RUNNER = MODEL = WORK = None
HOSTS = None
LOST_HOST_STOP_WITHIN = 15.0  # seconds from the fault to mpirun's exit (issue 18)
# Seconds from mpirun's exit until nothing of the job is left on the lost host. Its daemon
# gives up on host A after the same 8 s of silence as mpirun, then stops its rank; under
# ASan with the other tests beside it one process once outlived a 15 s wait (CI, session 17),
# so this waits longer: a process that never ends still fails it.
LOST_HOST_CLEANUP_WITHIN = 45.0
SKIP = 77


def sh(*cmd, check=True):
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r


class TwoHosts:
    """Network namespaces A and B, a veth pair between them, and per-host directories
    bound over one path (`self.mount`) inside each host's own mount namespace."""

    def __init__(self, work):
        tag = os.getpid() % 100000
        self.ns = {"host-a": f"shl{tag}a", "host-b": f"shl{tag}b"}
        self.veth = {"host-a": f"shv{tag}a", "host-b": f"shv{tag}b"}
        net = 10 + os.getpid() % 240
        self.subnet = f"10.231.{net}.0/24"
        self.ip = {"host-a": f"10.231.{net}.1", "host-b": f"10.231.{net}.2"}
        self.work = work
        self.mount = os.path.join(work, "host")  # each host's own directory appears here
        self.agent = os.path.join(work, "agent")
        self.agent_log = os.path.join(work, "agent.log")
        self.hostfile = os.path.join(work, "hostfile")

    def up(self):
        a, b = self.ns["host-a"], self.ns["host-b"]
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "link", "add", self.veth["host-a"], "netns", a, "type", "veth", "peer", "name",
           self.veth["host-b"], "netns", b)
        for host in ("host-a", "host-b"):
            ns = self.ns[host]
            sh("ip", "-n", ns, "addr", "add", self.ip[host] + "/24", "dev", self.veth[host])
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", self.veth[host], "up")
        os.makedirs(self.mount, exist_ok=True)
        with open(self.agent, "w") as f:
            f.write("#!/bin/sh\n"
                    "# OpenMPI's rsh agent: `agent HOST COMMAND...` runs COMMAND on HOST.\n"
                    "host=$1; shift\n"
                    "case \"$host\" in\n")
            for host in ("host-a", "host-b"):
                f.write(f"  {self.ip[host]}) ns={self.ns[host]}; name={host} ;;\n")
            f.write("  *) echo \"agent: unknown host $host\" >&2; exit 1 ;;\n"
                    "esac\n"
                    f"echo \"$name\" >> {self.agent_log}\n"
                    "exec ip netns exec \"$ns\" unshare --uts --mount sh -c \\\n"
                    f"  \"hostname $name && mount --bind {self.work}/hosts/$name {self.mount}"
                    " && $*\"\n")
        os.chmod(self.agent, 0o755)
        with open(self.hostfile, "w") as f:
            f.write(f"{self.ip['host-a']} slots=1\n{self.ip['host-b']} slots=1\n")

    def down(self):
        for host in ("host-a", "host-b"):
            self.kill(host)
            sh("ip", "netns", "del", self.ns[host], check=False)

    def pids(self, host, name=None):
        r = sh("ip", "netns", "pids", self.ns[host], check=False)
        out = []
        for pid in map(int, r.stdout.split()):
            comm = self.comm(pid)
            try:
                with open(f"/proc/{pid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if comm is not None and state != "Z" and (name is None or comm == name):
                out.append(pid)
        return out

    @staticmethod
    def comm(pid):
        """The command name of `pid`, or None when it has gone."""
        try:
            with open(f"/proc/{pid}/comm") as f:
                return f.read().strip()
        except OSError:
            return None

    @classmethod
    def names(cls, pids):
        """`pid name` of each of `pids`, for messages ("?" for a process that has gone)."""
        return [f"{pid} {cls.comm(pid) or '?'}" for pid in pids]

    def kill(self, host, name=None):
        for pid in self.pids(host, name):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def link(self, host, state):
        sh("ip", "-n", self.ns[host], "link", "set", self.veth[host], state)

    def restore_link(self):
        """Host A's link up again, returning once both ends carry and a TCP connection from
        host B to host A goes through (the next job's daemon on host B must reach mpirun at
        once, or the launch fails: a link that was only "UP" failed the next test once in a
        few runs with "ORTE was unable to reliably start one or more daemons")."""
        self.link("host-a", "up")
        deadline = time.time() + 10
        while time.time() < deadline:
            states = [sh("ip", "-n", self.ns[h], "-o", "link", "show", "dev", self.veth[h]).stdout
                      for h in ("host-a", "host-b")]
            if all("LOWER_UP" in s and "state UP" in s for s in states):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"the veth pair did not come back up: {states}")
        while time.time() < deadline:
            if self.b_reaches_a():
                return
            time.sleep(0.1)
        raise RuntimeError("host B cannot connect to host A after the link came back up")

    def b_reaches_a(self):
        """Whether a TCP connection from host B's namespace to a listener in host A's goes
        through within a second."""
        listen = ("import socket, sys\n"
                  "s = socket.socket(); s.bind((sys.argv[1], 0)); s.listen(1)\n"
                  "print(s.getsockname()[1], flush=True); s.settimeout(3)\n"
                  "try:\n    s.accept()\nexcept OSError:\n    pass\n")
        connect = ("import socket, sys\n"
                   "socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)\n")
        server = subprocess.Popen(["ip", "netns", "exec", self.ns["host-a"], sys.executable,
                                   "-c", listen, self.ip["host-a"]],
                                  stdout=subprocess.PIPE, text=True)
        try:
            port = server.stdout.readline().strip()
            if not port:
                return False
            r = sh("ip", "netns", "exec", self.ns["host-b"], sys.executable, "-c", connect,
                   self.ip["host-a"], port, check=False)
            return r.returncode == 0
        finally:
            server.kill()
            server.wait()

    def host_dir(self, host):
        return os.path.join(self.work, "hosts", host)

    def install(self, model):
        """Fresh copies of the binary and `model` in each host's own directory."""
        for host in ("host-a", "host-b"):
            d = self.host_dir(host)
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(os.path.join(d, "bin"))
            shutil.copy2(SHARDLM, os.path.join(d, "bin", "shardlm"))
            shutil.copytree(model, os.path.join(d, "model"))
        if os.path.exists(self.agent_log):
            os.remove(self.agent_log)

    def command(self, args):
        """`launch/shardlm-run` on host A over both hosts, TCP only; `args` is the shardlm
        command with paths under self.mount for what each host reads from its own copy."""
        inner = (f"hostname host-a && mount --bind {self.host_dir('host-a')} {self.mount}"
                 ' && exec "$@"')
        return (["ip", "netns", "exec", self.ns["host-a"], "unshare", "--uts", "--mount",
                 "sh", "-c", inner, "sh", RUNNER, "-np", "2", "--hostfile", self.hostfile,
                 "--mca", "plm_rsh_agent", self.agent, "--mca", "pml", "ob1",
                 "--mca", "btl", "self,tcp", "--mca", "btl_tcp_if_include", self.subnet,
                 "--mca", "oob_tcp_if_include", self.subnet] + args)

    def env(self):
        return dict(jobs.ENV, SHARDLM_BIN=os.path.join(self.mount, "bin", "shardlm"))

    def launched_on(self):
        with open(self.agent_log) as f:
            return f.read().split()


class TwoHostTest(unittest.TestCase):
    def setUp(self):
        HOSTS.install(MODEL)
        self.model = os.path.join(HOSTS.mount, "model")

    def run_two_hosts(self, args, timeout=300):
        return subprocess.run(HOSTS.command(args), capture_output=True, text=True,
                              timeout=timeout, env=HOSTS.env())

    def decode_args(self, prompts, out, *extra):
        return ["decode", "--model", self.model, "--prompts", prompts, "--output", out] + list(extra)

    def test_decode_on_two_hosts_equals_one_host(self):
        prompts = os.path.join(WORK, "prompts.jsonl")
        jobs.write_jsonl(prompts, [
            {"id": "greedy", "prompt": "The jury said that the city", "max_new_tokens": 24},
            {"id": "sampled", "prompt": "It was a long day, and", "max_new_tokens": 24,
             "temperature": 0.8, "top_p": 0.9, "seed": 7},
            {"id": "tokens", "tokens": [5, 6, 7, 8, 9], "max_new_tokens": 16},
        ])
        one = os.path.join(WORK, "one-host.jsonl")
        jobs.mpirun(SHARDLM, ["decode", "--model", MODEL, "--prompts", prompts, "--output", one],
                    np=2)
        two = os.path.join(WORK, "two-hosts.jsonl")
        r = self.run_two_hosts(self.decode_args(prompts, two))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(HOSTS.launched_on(), ["host-b"], "rank 1 did not start on host B")
        self.assertEqual(jobs.read_jsonl(two), jobs.read_jsonl(one))
        self.assertIn("shardlm decode: 3 requests (0 errors)", r.stderr)

    def refused(self, message):
        prompts = os.path.join(WORK, "one.jsonl")
        jobs.write_jsonl(prompts, [{"id": 0, "tokens": [5, 6], "max_new_tokens": 4}])
        out = os.path.join(WORK, "refused.jsonl")
        r = self.run_two_hosts(self.decode_args(prompts, out))
        self.assertNotEqual(r.returncode, 0, r.stderr)
        ours = [l for l in r.stderr.splitlines() if l.startswith("shardlm decode:")]
        self.assertEqual(len(ours), 1, r.stderr)
        self.assertIn(message, ours[0])
        self.assertEqual(HOSTS.launched_on(), ["host-b"])

    def test_other_checkpoint_on_host_b_is_refused(self):
        path = os.path.join(HOSTS.host_dir("host-b"), "model", "config.json")
        with open(path) as f:
            config = json.load(f)
        config["rope_theta"] = config.get("rope_theta", 10000.0) * 2
        with open(path, "w") as f:
            json.dump(config, f)
        self.refused("rank 1: checkpoint mismatch")

    def test_other_build_on_host_b_is_refused(self):
        # Another build of the same source: the build time in the Hello's build id (the
        # __TIME__ string handshake.cc compiles in) differs. Every NUL-terminated "HH:MM:SS"
        # string of host B's copy is changed (sanitizer builds put redzones between literals,
        # so the stamp is found by its own shape, not next to the date).
        path = os.path.join(HOSTS.host_dir("host-b"), "bin", "shardlm")
        with open(path, "rb") as f:
            binary = bytearray(f.read())
        stamps = list(re.finditer(rb"(?<=\x00)\d\d:\d\d:\d\d(?=\x00)", bytes(binary)))
        self.assertGreater(len(stamps), 0, "no build time stamp in the binary")
        for m in stamps:
            binary[m.start():m.end()] = b"00:00:01" if m.group(0) != b"00:00:01" else b"00:00:02"
        with open(path, "wb") as f:
            f.write(binary)
        self.refused("rank 1: binary mismatch")

    def test_unreachable_host_b_is_explained(self):
        # With --hostfile, shardlm-run keeps mpirun's own diagnostics: a daemon that cannot reach
        # back to mpirun is named, not a silent non-zero exit.
        HOSTS.link("host-a", "down")
        self.addCleanup(HOSTS.restore_link)
        prompts = os.path.join(WORK, "one.jsonl")
        jobs.write_jsonl(prompts, [{"id": 0, "tokens": [5, 6], "max_new_tokens": 4}])
        r = self.run_two_hosts(self.decode_args(prompts, os.path.join(WORK, "none.jsonl")),
                               timeout=120)
        self.assertNotEqual(r.returncode, 0, r.stderr)
        self.assertIn("daemon", r.stderr)

    def lose_host_b(self, fault):
        """Starts a long decode, waits for results, applies `fault` and checks the end."""
        prompts = os.path.join(WORK, "many.jsonl")
        jobs.write_jsonl(prompts, [{"id": i, "tokens": [256, i % 256], "max_new_tokens": 50}
                                   for i in range(5000)])
        out = os.path.join(WORK, "lost.jsonl")
        if os.path.exists(out):
            os.remove(out)
        err = open(os.path.join(WORK, f"lost-{fault}.stderr"), "w+")
        self.addCleanup(err.close)
        p = subprocess.Popen(HOSTS.command(self.decode_args(prompts, out, "--max-batch", "4")),
                             stdout=subprocess.DEVNULL, stderr=err, env=HOSTS.env())
        self.addCleanup(lambda: p.poll() is None and (p.kill(), p.wait()))
        if fault == "link":
            self.addCleanup(HOSTS.restore_link)
        jobs.wait_for_results(p, out)
        self.assertIsNone(p.poll(), "the job ended before the fault")
        ranks_b = HOSTS.pids("host-b", "shardlm")
        self.assertEqual(len(ranks_b), 1, "host B does not run one rank")
        start = time.time()
        if fault == "kill":
            os.kill(ranks_b[0], signal.SIGKILL)
        else:
            HOSTS.link("host-a", "down")
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.fail("the job still runs 60 s after losing host B")
        elapsed = time.time() - start
        err.seek(0)
        stderr = err.read()
        self.assertNotEqual(p.returncode, 0, stderr)
        self.assertLess(elapsed, LOST_HOST_STOP_WITHIN, stderr)
        ours = [l for l in stderr.splitlines() if l.startswith("shardlm decode:")]
        self.assertEqual(len(ours), 1, stderr)
        self.assertIn(f"rank 1 (pid {ranks_b[0]} on host host-b)", ours[0])
        m = re.search(r"(\d+) finished results? (is|are) in (\S+), each on a complete line",
                      ours[0])
        self.assertIsNotNone(m, ours[0])
        with open(out) as f:
            text = f.read()
        self.assertTrue(text.endswith("\n"), "last line is incomplete")
        lines = text.splitlines()
        self.assertEqual(int(m.group(1)), len(lines))
        for line in lines:
            result = json.loads(line)
            self.assertEqual(len(result["tokens"]), len(result["logprobs"]))
        # Nothing of the job stays behind on host B (its daemon gives up on host A too).
        deadline = time.time() + LOST_HOST_CLEANUP_WITHIN
        while HOSTS.pids("host-b") and time.time() < deadline:
            time.sleep(0.2)
        left = HOSTS.pids("host-b")
        self.assertEqual(left, [], f"processes left on host B: {HOSTS.names(left)}")
        return ours[0], elapsed

    def test_host_b_processes_killed(self):
        message, _ = self.lose_host_b("kill")
        self.assertIn("died unexpectedly", message)

    def test_link_to_host_b_down(self):
        message, _ = self.lose_host_b("link")
        self.assertIn("stopped answering", message)


def main():
    global SHARDLM, RUNNER, MODEL, WORK, HOSTS
    SHARDLM, RUNNER, MODEL, WORK = (os.path.abspath(a) for a in sys.argv[1:5])
    del sys.argv[1:5]
    os.makedirs(WORK, exist_ok=True)
    HOSTS = TwoHosts(WORK)
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("unshare") is None:
        print("skipped: emulating two hosts needs root, `ip` (iproute2) and `unshare`")
        return SKIP
    try:
        HOSTS.up()
    except RuntimeError as e:
        HOSTS.down()
        print(f"skipped: network namespaces cannot be made here: {e}")
        return SKIP
    try:
        result = unittest.main(exit=False).result
    finally:
        HOSTS.down()
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Faults during a decode job (comm/watchdog.h): a rank killed with SIGKILL (or
ranks 0 and 1 together), or SIGINT/SIGTERM to mpirun, ends the job within seconds
with one message that names the cause (the dead ranks with their pids and host),
a non-zero exit, and an output file that keeps every finished result, each on a
complete line.

usage: fault_test.py SHARDLM WORKDIR
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jobs  # noqa: E402

SHARDLM = MODEL = WORK = None
ENV = jobs.ENV
STOP_WITHIN = 10.0  # seconds from the fault to mpirun's exit (issue 6)
# Ranks 0 and 1 dead: rank 2 waits at most 0.5 s for rank 1, then exits within
# about 1 s (comm/watchdog.h); the rest is slack for a loaded machine.
BOTH_DEAD_STOP_WITHIN = 3.0


def rank_pids(mpirun_pid):
    """{rank: pid} of the ranks mpirun started (one host: its children)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != mpirun_pid:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except (OSError, IndexError, ValueError):
            continue
        if b"OMPI_COMM_WORLD_RANK" in env:
            out[int(env[b"OMPI_COMM_WORLD_RANK"])] = int(entry)
    return out


class Faults(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        global MODEL
        # Seed 0 of the tiny preset seldom samples EOS, so requests run to max_new_tokens
        # tokens (50 here): the job is still running when the fault comes.
        MODEL = os.path.join(WORK, "gqa")
        if not os.path.exists(os.path.join(MODEL, "config.json")):
            r = subprocess.run([SHARDLM, "make-model", "--attention", "gqa", "--seed", "0",
                                "--out", MODEL], capture_output=True, text=True, env=ENV,
                               timeout=120)
            assert r.returncode == 0, r.stderr
        cls.prompts = os.path.join(WORK, "many.jsonl")
        with open(cls.prompts, "w") as f:
            for i in range(20000):
                f.write(json.dumps({"id": i, "tokens": [256, i % 256], "max_new_tokens": 50}) + "\n")

    def popen(self, cmd, name):
        # stderr goes to a file: an unread pipe that fills up would stall the job.
        err = open(os.path.join(WORK, name + ".stderr"), "w+")
        self.addCleanup(err.close)
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=ENV)
        p.err_file = err
        self.addCleanup(self.stop, p)
        return p

    def start(self, name, np, quiet=True):
        """Starts a decode job on np ranks under mpirun (np=None: one process, no mpirun)
        and returns once it has written a few results."""
        out = os.path.join(WORK, name + ".jsonl")
        if os.path.exists(out):
            os.remove(out)
        cmd = [SHARDLM, "decode", "--model", MODEL, "--prompts", self.prompts,
               "--output", out, "--max-batch", "4"]
        if np is not None:
            cmd = ["mpirun", "--oversubscribe", "--bind-to", "none"] + (
                ["-q"] if quiet else []) + ["-np", str(np)] + cmd
        p = self.popen(cmd, name)
        # Wait for a few finished results, so there is something to keep (start-up is slow on
        # a loaded machine: up to 240 s).
        jobs.wait_for_results(p, out)
        self.assertIsNone(p.poll(), "the job ended before the fault")
        return p, out

    @staticmethod
    def stop(p):
        # A failed test must not leave a job behind: SIGTERM lets mpirun end its ranks.
        if p.poll() is None:
            p.terminate()
            try:
                p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()

    def finish(self, p):
        """Waits for mpirun; returns (stderr, seconds it took)."""
        start = time.time()
        p.wait(timeout=60)
        elapsed = time.time() - start
        p.err_file.seek(0)
        err = p.err_file.read()
        self.assertNotEqual(p.returncode, 0, err)
        self.assertLess(elapsed, STOP_WITHIN, err)
        return err, elapsed

    def assertCompleteLines(self, out, stderr):
        with open(out) as f:
            text = f.read()
        lines = text.splitlines()
        self.assertGreaterEqual(len(lines), 2)
        self.assertTrue(text.endswith("\n"), "last line is incomplete")
        for line in lines:
            result = json.loads(line)
            self.assertIn(result["finish_reason"], ("stop", "length"))
            self.assertEqual(len(result["tokens"]), len(result["logprobs"]))
        return len(lines)

    def kill_ranks(self, ranks, np, quiet=True):
        """SIGKILLs `ranks` (one after the other, microseconds apart) mid-decode and
        checks the one message names each; returns (message, result lines, seconds).

        A run whose output has no line of ours at all is retried once, saying so on
        stderr. The job is torn down fast: in a traced run (session 5) mpirun's SIGTERM
        reached the surviving ranks ~5 ms after two ranks were killed, and a rank 0 made to
        hold its report back was gone within 0.2 s, without a word. A reporting rank whose
        watchdog thread the loaded machine does not run within that time dies before it
        writes. Seen once in CI (2 cores, other tests running).
        A second such run, or any other failure, fails the test."""
        try:
            return self._kill_ranks_once(ranks, np, quiet)
        except AssertionError as e:
            if not str(e).startswith("0 != 1"):
                raise
            print(f"\nretrying once: no line of ours in the job's output:\n{e}", file=sys.stderr)
            return self._kill_ranks_once(ranks, np, quiet)

    def _kill_ranks_once(self, ranks, np, quiet):
        name = "kill-rank" + "-".join(map(str, ranks))
        p, out = self.start(f"{name}-np{np}{'' if quiet else '-loud'}", np, quiet)
        pids = rank_pids(p.pid)
        self.assertEqual(sorted(pids), list(range(np)), pids)
        for rank in ranks:
            os.kill(pids[rank], signal.SIGKILL)
        err, elapsed = self.finish(p)
        ours = [l for l in err.splitlines() if l.startswith("shardlm decode:")]
        self.assertEqual(len(ours), 1, err)
        self.assertIn(" died unexpectedly", ours[0])
        for rank in ranks:
            named = f"rank {rank} (pid {pids[rank]} on host {os.uname().nodename})"
            self.assertEqual(ours[0].count(named), 1, ours[0])
        self.assertEqual(len(re.findall(r"rank \d+ \(pid", ours[0])), len(ranks), ours[0])
        if quiet:
            self.assertEqual(err.strip(), ours[0], "more than one message")
        lines = self.assertCompleteLines(out, err)
        return ours[0], lines, elapsed

    def kill_rank(self, rank, np, quiet=True):
        message, lines, _ = self.kill_ranks([rank], np, quiet)
        return message, lines

    def test_kill_rank1(self):
        message, lines = self.kill_rank(1, 2)
        # Rank 0 reports, and counts what the file holds.
        m = re.search(r"(\d+) finished results? (is|are) in (\S+), each on a complete line", message)
        self.assertIsNotNone(m, message)
        self.assertEqual(int(m.group(1)), lines)

    def test_kill_rank0(self):
        message, _ = self.kill_rank(0, 2)
        self.assertIn("results finished before are in the output file", message)

    def test_kill_rank2_of_4_without_quiet(self):
        # Plain mpirun adds its own block; ours is still there, once.
        self.kill_rank(2, 4, quiet=False)

    def test_kill_rank0_of_4(self):
        # Rank 1 reports; ranks 2 and 3, which also watch rank 1, stay quiet.
        message, _ = self.kill_rank(0, 4)
        self.assertIn("results finished before are in the output file", message)

    def test_kill_rank1_of_4(self):
        # Rank 0 reports; ranks 2 and 3 see rank 1's second link end and stay quiet.
        self.kill_rank(1, 4)

    def test_kill_ranks0_and_1_of_4(self):
        # The host holding ranks 0 and 1 dies: neither can report, so rank 2 does (it
        # watches rank 1 as well as rank 0).
        message, _, elapsed = self.kill_ranks([0, 1], 4)
        self.assertIn("results finished before are in the output file", message)
        self.assertLess(elapsed, BOTH_DEAD_STOP_WITHIN, message)

    def stop_mpirun(self, sig):
        """Signals mpirun mid-decode and checks rank 0's one stop line. A run with no line of
        ours at all is retried once, saying so on stderr, for the reason kill_ranks gives
        (seen once with SIGTERM, two test jobs and a compiler sharing the 2 cores)."""
        try:
            self._stop_mpirun_once(sig)
        except AssertionError as e:
            if not str(e).startswith("unexpectedly None : ") or "shardlm decode:" in str(e):
                raise
            print(f"\nretrying once: no line of ours in the job's output:\n{e}", file=sys.stderr)
            self._stop_mpirun_once(sig)

    def _stop_mpirun_once(self, sig):
        p, out = self.start(f"stop-{sig.name}", 2)
        p.send_signal(sig)
        err, _ = self.finish(p)
        # mpirun turns SIGINT into SIGTERM for the ranks.
        m = re.fullmatch(r"shardlm decode: stopped by SIGTERM; (\d+) finished results? (is|are) in "
                         r"(\S+), each on a complete line", err.strip())
        self.assertIsNotNone(m, err)
        self.assertEqual(m.group(3), out)
        self.assertEqual(int(m.group(1)), self.assertCompleteLines(out, err))

    def test_sigterm_to_mpirun(self):
        self.stop_mpirun(signal.SIGTERM)

    def test_sigint_to_mpirun(self):
        self.stop_mpirun(signal.SIGINT)

    def test_sigint_single_process(self):
        p, out = self.start("single", None)
        p.send_signal(signal.SIGINT)
        err, _ = self.finish(p)
        self.assertEqual(p.returncode, 128 + signal.SIGINT)
        self.assertRegex(err.strip(), r"^shardlm decode: stopped by SIGINT; \d+ finished results")
        self.assertCompleteLines(out, err)


if __name__ == "__main__":
    SHARDLM, WORK = sys.argv[1:3]
    os.makedirs(WORK, exist_ok=True)
    unittest.main(argv=sys.argv[:1] + sys.argv[3:], verbosity=2)

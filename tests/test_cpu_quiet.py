"""The native runtime's informational log lines (cpuinfo's CPU detection when XNNPACK starts) stay off stderr
unless --verbose; anything else native code writes there, errors included, still shows."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gdn.runner.methods import quiet_native_logs

NOISE = "[cpuinfo_utils.cpp:"


def test_noise_is_dropped_and_other_native_lines_are_kept(capfd):
    with quiet_native_logs(True):
        os.write(2, b"[cpuinfo_utils.cpp:71] Reading file /sys/devices/soc0/image_version\n")
        os.write(2, b"[method.cpp:42] a real error\n")
    assert capfd.readouterr().err == "[method.cpp:42] a real error\n"


def test_lines_written_before_an_exception_still_show(capfd):
    with pytest.raises(RuntimeError, match="load failed"):
        with quiet_native_logs(True):
            os.write(2, b"[program.cpp:9] bad header\n")
            raise RuntimeError("load failed")
    assert capfd.readouterr().err == "[program.cpp:9] bad header\n"
    os.write(2, b"after\n")  # file descriptor 2 is the terminal's again
    assert capfd.readouterr().err == "after\n"


def test_disabled_lets_everything_through(capfd):
    with quiet_native_logs(False):
        os.write(2, b"[cpuinfo_utils.cpp:71] x\n")
    assert capfd.readouterr().err == "[cpuinfo_utils.cpp:71] x\n"


def _gdn_run(artifact: Path, *flags: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("gdn-run")
    env = {k: v for k, v in os.environ.items() if k != "GDN_NATIVE_LOGS"}
    return subprocess.run([str(exe), "--model", str(artifact), "--prompt-ids", "3,4,5", "--max-new-tokens", "4",
                           "--temperature", "0", *flags], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
def test_gdn_run_stderr_is_quiet_unless_verbose(cpu_artifacts):
    artifact = cpu_artifacts["default"][1]
    quiet = _gdn_run(artifact)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "", quiet.stderr
    assert quiet.stdout.strip()  # the reply's text
    stats = _gdn_run(artifact, "--stats")
    assert stats.returncode == 0 and stats.stderr.count("\n") == 1 and "decode" in stats.stderr, stats.stderr
    if sys.platform.startswith("linux"):
        verbose = _gdn_run(artifact, "--verbose")
        assert verbose.returncode == 0 and NOISE in verbose.stderr, verbose.stderr
        assert verbose.stdout == quiet.stdout

"""The listening evaluation's imports on a thread from the start of a run (what its first evaluation then finds
loaded), without a run: the runs themselves are in test_listening_runs.py."""

import importlib.util
import sys

from higgs_ds.config import EvalConfig
from higgs_ds.listening.listen_eval import import_in_background, listening_modules


def test_the_modules_named_are_the_ones_the_scorers_asked_for_and_exist():
    default = listening_modules(EvalConfig())
    assert "resemblyzer" in default and "speechmos.dnsmos" in default
    for name in default:  # a misspelt name would only ever fail silently on the thread
        assert importlib.util.find_spec(name) is not None, name
    other = listening_modules(EvalConfig(speaker_model="some/xvector", dnsmos=False))
    assert "resemblyzer" not in other and "speechmos.dnsmos" not in other
    assert other[0] == "boson_multimodal.audio_processing.higgs_audio_tokenizer"


def test_imports_run_on_their_thread_and_one_that_fails_does_not_stop_the_rest(tmp_path, monkeypatch):
    (tmp_path / "listening_probe_module.py").write_text(
        "import threading\nIMPORTED_ON = threading.current_thread().name\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("listening_probe_module", None)
    thread = import_in_background(["no_such_module_anywhere", "listening_probe_module"])
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert "no_such_module_anywhere" not in sys.modules
    assert sys.modules["listening_probe_module"].IMPORTED_ON == "higgs-ds-listening-imports"


def test_a_fork_while_the_thread_imports_waits_for_it(tmp_path, monkeypatch):
    """A loader worker forked mid-import would inherit that module's import lock with no thread to release it:
    the fork waits until the imports are done, so the child finds the module whole."""
    import os
    import time

    (tmp_path / "slow_probe_module.py").write_text("import time\ntime.sleep(1.0)\nDONE = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("slow_probe_module", None)
    thread = import_in_background(["slow_probe_module"])
    time.sleep(0.2)  # the thread is inside the module's import now
    assert "slow_probe_module" in sys.modules and not hasattr(sys.modules["slow_probe_module"], "DONE")
    pid = os.fork()
    if pid == 0:  # the child: the module must be complete, not half imported
        os._exit(0 if getattr(sys.modules.get("slow_probe_module"), "DONE", False) else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not thread.is_alive()

import subprocess
import sys

from tests.conftest import ROOT


def test_synth_command_writes_market_layout(tmp_path):
    out = tmp_path / "target"
    result = subprocess.run([sys.executable, "-m", "flows.cli", "synth", "--domain", "target", "--out", str(out),
                             "--train-ids", "3", "--test-ids", "3", "--workers", "1"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    for folder in ("bounding_box_train", "bounding_box_test", "query"):
        assert list((out / folder).glob("*_c*s1_*.jpg")), folder
    header = (out / "manifest.csv").read_text().splitlines()[0]
    assert header == "path,pid,camid,split"


def test_synth_refuses_to_overwrite_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    result = subprocess.run([sys.executable, "-m", "flows.cli", "synth", "--domain", "source", "--out", str(tmp_path),
                             "--train-ids", "2", "--test-ids", "2", "--workers", "1"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert "not a generated dataset" in result.stdout
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_unknown_domain_is_rejected(tmp_path):
    result = subprocess.run([sys.executable, "-m", "flows.cli", "synth", "--domain", "moon", "--out",
                             str(tmp_path / "x")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2 and "source, target" in result.stdout
    assert not (tmp_path / "x").exists()

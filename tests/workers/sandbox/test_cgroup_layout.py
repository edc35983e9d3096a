"""The cgroup v2 layout, checked on a directory tree shaped like a v2 hierarchy (this
machine runs v1; the process tests exercise v1 for real). What is checked is what we
write: controllers delegated level by level, and each limit in the file v2 reads."""

from __future__ import annotations

from pathlib import Path

from workers.sandbox.cgroups import detect_layout
from workers.sandbox.limits import MIB, SandboxLimits


def fake_v2_root(tmp_path: Path) -> Path:
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma\n")
    (root / "cgroup.subtree_control").write_text("memory\n")
    return root


def test_v2_delegates_controllers_and_writes_limits(tmp_path: Path):
    root = fake_v2_root(tmp_path)
    layout = detect_layout("system.slice/codeloop", mounts=(root, {}))
    assert layout.version == "v2" and layout.missing == []
    assert (root / "cgroup.subtree_control").read_text() == "+pids +cpu"
    for level in ("system.slice", "system.slice/codeloop"):
        assert (root / level / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    limits = SandboxLimits(timeout_s=5, memory_mb=300, output_bytes=1, pids=50, cpus=1.5,
                           tmpfs_mb=8)  # fmt: skip
    cg = layout.run_cgroup(7)
    cg.create(limits)
    slot = root / "system.slice/codeloop/slot-7"
    assert cg.dirs == [slot]
    assert (slot / "memory.max").read_text() == str(300 * MIB)
    assert (slot / "memory.swap.max").read_text() == "0"
    assert (slot / "pids.max").read_text() == "50"
    assert (slot / "cpu.max").read_text() == "150000 100000"
    assert cg.procs_files == [str(slot / "cgroup.procs")]


def test_missing_controllers_are_reported(tmp_path: Path):
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu io\n")
    layout = detect_layout("codeloop", mounts=(root, {}))
    assert not layout.usable
    assert "need memory, pids and cpu" in layout.missing[0]

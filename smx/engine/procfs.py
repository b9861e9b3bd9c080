"""Linux /proc facts about processes (None / [] where /proc is missing): state, start time, children."""

from __future__ import annotations

from pathlib import Path

_PROC = Path("/proc")


def _stat_fields(stat: Path) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state, ppid, ...): the text after "pid (comm)", which ends at the last ')'."""
    try:
        return stat.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def state(pid: int) -> str | None:
    """The state letter of process `pid` (R, S, Z: zombie, ...), or None when it is gone."""
    fields = _stat_fields(_PROC / str(pid) / "stat")
    return fields[0] if fields else None


def process_start(pid: int) -> int | None:
    """Start time of process `pid` in clock ticks since boot, or None when unknown."""
    fields = _stat_fields(_PROC / str(pid) / "stat")
    try:
        return int(fields[19]) if fields else None  # field 22, starttime
    except (IndexError, ValueError):
        return None


def children(pid: int) -> list[int]:
    """The pids of the live (not zombie) child processes of `pid`, sorted."""
    found = []
    for stat in _PROC.glob("[0-9]*/stat"):
        fields = _stat_fields(stat)
        if fields is not None and len(fields) > 1 and fields[1] == str(pid) and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return sorted(found)

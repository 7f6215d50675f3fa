"""Writing a file so that readers see the old or the new bytes, never a part (stdlib only,
so the command line's warm start can use it without importing the RL layer)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file unique to this writer.

    The temporary name carries the process id and a random part, so processes on
    several hosts may write into one shared folder. ``os.replace`` then swaps it in.

    Args:
      path: the file to write.
      data: its new bytes.
      sync: ``fsync`` the data before the swap (checkpoints: they must survive a crash).

    Raises:
      OSError: the folder is missing or not writable.

    Examples:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from npgjax._files import atomic_write
      >>> p = Path(tempfile.mkdtemp()) / "x.json"
      >>> atomic_write(p, b"{}")
      >>> p.read_bytes()
      b'{}'
    """
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

"""A live view of a pipeline in the browser: its frames (with detections drawn over them),
each stage's rates, latency, lag and time split, and the auto-scaling master's decisions.

``fogverse view --frames TOPIC ...`` from the command line, or from a pipeline script::

    view = await open_view(servers, frames=["cam.frames"], nodes=[camera, prep, sink])
    print(view.url)
    ...
    await view.close()

Needs the ``view`` extra (aiohttp). See docs/view.md.
"""

from fogverse.view.config import StageSpec, ViewConfig
from fogverse.view.service import View, open_view

__all__ = ["StageSpec", "View", "ViewConfig", "open_view"]

"""FogVerse's benchmark suite: ``python -m benchmarks [--quick]`` (see benchmarks/README.md).

``pool`` measures the process pool against one process and the standard library's pools;
``kafka`` measures pipelines on a real broker; results are JSON documents in the schema of
:mod:`benchmarks.common`, plotted by :mod:`benchmarks.plots`.
"""

__all__: list[str] = []

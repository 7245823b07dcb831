"""A node's data path, in the order a message meets it.

- :mod:`~fogverse.node.io`: ``Consumer`` reads a batch of records from its transport;
- :mod:`~fogverse.node.loop`: ``Runnable`` opens a delivery per record and runs it through
  decode, process, encode and send, dead-letters what fails, and commits;
- :mod:`~fogverse.node.parallel`: ``ParallelRunnable`` puts the process step in a
  :class:`~fogverse.parallel.WorkerPool` behind a window of ``max_running_task`` tasks;
- :mod:`~fogverse.node.delivery`: an input is done when every output it caused is
  acknowledged (or dead-lettered);
- :mod:`~fogverse.node.offsets`: per partition, the offset below which every input is done,
  which is what the loop commits.

The public names are re-exported from :mod:`fogverse`.
"""

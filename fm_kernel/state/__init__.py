"""Time travel over the user namespace: capture a cell's effect on it
incrementally (``snapshot``, ``analysis``, ``pickling``), keep states as
operations on the history (``states``), and move HEAD (``navigate``)."""

"""The web dashboard: server-rendered pages over the engine's live views and the SQL event log.

Front ends mount it on their own FastAPI app (``pages.mount``): the standalone service at ``/`` of its
API port, ``rayqueue dashboard --db URL`` on history alone. It sits below the front ends (it imports
none of them): live data comes through the small :class:`~.live.LiveSource` protocol a front end
implements, history through read-only SQL on the tables the store writes (:mod:`.history`).
"""

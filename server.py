"""cnnlab's dashboard server: app.py's pages plus the live-curve feed the Train page polls.

`cnnlab app` runs `streamlit run server.py`. Streamlit serves app.py as usual and, through
`st.App`, the routes of pages/live.py next to its own. `streamlit run app.py` works too, without
the feed: the Train page then redraws its live view by re-running a fragment every second.
This server also runs the workspace's job queue (cnnlab.jobs serve): jobs queued before a restart
or by `cnnlab jobs submit` start here, one process each.
"""

import streamlit as st

from cnnlab import jobs
from pages import live

jobs.get_manager().serve()
app = st.App("app.py", routes=live.routes())

"""cnnlab's dashboard server: app.py's pages plus the live-curve feed and the predict API.

`cnnlab app` runs `streamlit run server.py`. Streamlit serves app.py as usual and, through
`st.App`, the routes of pages/live.py (the Train page's feed) and pages/predict_api.py
(`POST /api/cnnlab/predict`) next to its own. `streamlit run app.py` works too, without them: the
Train page then redraws its live view by re-running a fragment every second.
This server also runs the workspace's job queue (cnnlab.jobs serve): jobs queued before a restart
or by `cnnlab jobs submit` start here, one process each.
"""

import streamlit as st

from cnnlab import jobs
from pages import live, predict_api

jobs.get_manager().serve()
app = st.App("app.py", routes=live.routes() + predict_api.routes())

"""cnnlab's dashboard server: app.py's pages plus the live-curve feed and the predict API.

`cnnlab app` runs `streamlit run server.py`. Streamlit serves app.py as usual and, through
`st.App`, the routes of pages/live.py (the Train page's feed) and pages/predict_api.py
(`POST /api/cnnlab/predict`) next to its own. `streamlit run app.py` works too, without them: the
Train page then redraws its live view by re-running a fragment every second.
"""

import streamlit as st

from pages import live, predict_api

app = st.App("app.py", routes=live.routes() + predict_api.routes())

"""The server of `cnnlab serve RUN_ID`: demo_app/app.py (one run's predict-only demo) plus the
predict API, both pinned to the run in CNNLAB_SERVE_RUN (set by `cnnlab serve`).

No live feed and no other page: this server shows visitors one model, nothing of the lab.
"""

import streamlit as st

from pages import predict_api

app = st.App("demo_app/app.py", routes=predict_api.routes())

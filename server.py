"""cnnlab's dashboard server: app.py's pages plus the live-curve feed the Train page polls.

`cnnlab app` runs `streamlit run server.py`. Streamlit serves app.py as usual and, through
`st.App`, the routes of pages/live.py next to its own. `streamlit run app.py` works too, without
the feed: the Train page then redraws its live view by re-running a fragment every second.
"""

import streamlit as st

from pages import live

app = st.App("app.py", routes=live.routes())

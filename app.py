"""cnnlab dashboard entry point: page navigation and the shared sidebar.

Run with `cnnlab app` (or `streamlit run server.py`: this app plus the Train page's live feed;
`streamlit run app.py` works too, without it). Pages live in pages/; pages/ui.py holds the helpers
and the session-state keys they share.
"""

import streamlit as st

from cnnlab import reach, users, workspace
from cnnlab.archive import dataset_name
from cnnlab.device import describe_device
from pages import ui

st.set_page_config(page_title="cnnlab", page_icon=":material/neurology:", layout="wide")
reach.enable_visitor_rules()  # this process and its jobs act on visitors' say: limit what they reach


@st.cache_resource(show_spinner=False)
def _device_label() -> str:
    return describe_device("auto")


PAGES = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/data.py", title="Data", icon=":material/dataset:"),
    st.Page("pages/augment.py", title="Augment", icon=":material/auto_fix_high:"),
    st.Page("pages/model.py", title="Model", icon=":material/account_tree:"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/tune.py", title="Tune", icon=":material/tune:"),
    st.Page("pages/evaluate.py", title="Evaluate", icon=":material/analytics:"),
    st.Page("pages/predict.py", title="Predict", icon=":material/image_search:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/history:"),
]
page = st.navigation(PAGES)
# A narrow window (a laptop split screen, ~800 px): a slimmer sidebar leaves the page room, and
# the pages' metric and button rows wrap instead of cutting their labels.
st.html(
    "<style>@media (max-width: 1000px) {section[data-testid='stSidebar'] "
    "{width: 190px !important; min-width: 190px !important;}}</style>"
)
ui.restore_session()  # a reload gets the session's choices back (the id is in the URL)

with st.sidebar:
    if users.mode(ui.oidc_configured()) != "single":
        st.caption(f"**Signed in as:** {ui.literal(ui.user().name)}")
    st.caption(f"**Device:** {_device_label()}")
    st.caption(f"**Workspace:** `{workspace.home()}`")
    dataset = st.session_state.get(ui.DATASET_PATH)
    st.caption(f"**Data set:** {ui.literal(dataset_name(dataset)) if dataset else 'none chosen'}")
    for snap in ui.job_manager().list(active_only=True):
        what = "Tuning" if snap.kind == "tune" else "Training"
        st.caption(f"**{what}:** {snap.name or snap.run_id or 'starting'}")
        target = "pages/tune.py" if snap.kind == "tune" else ui.TRAIN_PAGE
        st.page_link(target, label="Watch it", icon=":material/monitoring:")

try:
    page.run()
finally:  # also after st.stop / st.switch_page, which end the run with an exception
    ui.save_session()

"""Home page: what cnnlab is and the order of the steps."""

import streamlit as st

st.title("cnnlab")
st.markdown(
    "A local lab for image classifiers: bring a folder of labelled images, train a CNN, "
    "tune it, and see where it goes wrong. Everything runs on this machine; "
    "every run is saved with its config so it can be repeated from the command line."
)
st.markdown("**Workflow:** Data → Augment → Model → Train → Tune → Evaluate → Predict → Runs")
st.page_link("pages/data.py", label="Start with the data", icon=":material/dataset:")

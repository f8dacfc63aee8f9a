"""Tune page: placeholder until its issue lands."""

import streamlit as st

st.title("Tune")
st.info(
    "Coming soon: hyperparameter search with Optuna and pruning.", icon=":material/construction:"
)

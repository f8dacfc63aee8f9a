"""Runs page: placeholder until its issue lands."""

import streamlit as st

st.title("Runs")
st.info(
    "Coming soon: browse, compare, export and delete saved runs.", icon=":material/construction:"
)

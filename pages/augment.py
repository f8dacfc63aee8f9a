"""Augment page: placeholder until its issue lands."""

import streamlit as st

st.title("Augment")
st.info(
    "Coming soon: random crops, flips, rotations and colour jitter with live previews.",
    icon=":material/construction:",
)

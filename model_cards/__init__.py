"""Jinja model card templates (installed as ``optical_st.model_cards``)."""

"""The Streamlit viewer of i2m2-med, installed as the package ``i2m2_med_app``.

``streamlit run app/main.py`` from a checkout, or ``i2m2-med app`` from any install, starts it;
``main.py`` is the entry page, ``views/`` the pages, ``viewer/`` the helpers they share, and
``.streamlit/config.toml`` the server's safety settings.
"""

"""Building blocks of the i2m2-med Streamlit app: settings, safe paths, study sources, cached
computation (through :mod:`i2m2_med` only), plotly figures and the per-study report."""

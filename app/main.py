"""i2m2-med evidence viewer: ``streamlit run app/main.py``.

The pages live in ``app/views/`` and are declared here with ``st.navigation`` (a folder named
``pages/`` would switch Streamlit to its older multipage mode for the first request of a server
when that request names a page).

Starts on the embedded default (the bundled demo model and demo studies generated on first use
into a private cache folder). Settings come from environment variables, see
``app/viewer/settings.py``; server safety settings from ``.streamlit/config.toml``.
"""

from __future__ import annotations

import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))

import streamlit as st  # noqa: E402

st.set_page_config(
    page_title="i2m2-med evidence viewer",
    page_icon=":material/radiology:",
    layout="wide",
    initial_sidebar_state="expanded",
)

from viewer import sources, ui  # noqa: E402


@st.cache_resource
def _remove_stale_uploads() -> int:
    """Once per server: the upload folders of servers that no longer run are deleted."""
    return sources.remove_stale_uploads()


_remove_stale_uploads()
ui.style()
ui.banner()
st.sidebar.toggle("Show identifiers from the files", key="show_ids",
                  help="Off (default): study and patient ids are shown hashed as `i2m2-med diagnose` writes them (SHA-256, "
                       "keyed by I2M2_ID_SALT when it is set) and file paths are hidden, on every page and in the "
                       "reports. Patient names are never read.")
page = st.navigation([
    st.Page("views/study.py", title="Study evidence", icon=":material/radiology:", default=True),
    st.Page("views/batch.py", title="Batch results", icon=":material/table_view:"),
])
page.run()

"""``python -m optical_st train ...``: the ``optical-st`` command (:mod:`optical_st.cli`) without installing it."""

import sys

from optical_st.cli import main

if __name__ == "__main__":
    sys.exit(main())

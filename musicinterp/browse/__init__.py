"""A static HTML feature browser of a run (musicinterp/browse/README.md): ``build_site`` writes it,
``serve`` shows it on 127.0.0.1. No Prefect here; flows/browse.py wraps it."""

from musicinterp.browse.contents import BrowseInputError, RunContents, discover
from musicinterp.browse.serve import serve
from musicinterp.browse.site import SiteResult, build_site

__all__ = ["BrowseInputError", "RunContents", "SiteResult", "build_site", "discover", "serve"]

"""`UserError`: the one exception type for "the user asked for something wrong".

It lives in `core/`, the bottom of the import chain (core <- model <- curation <- training <- orchestration), so that
every package can raise it where it validates input. `svp` prints a UserError as one line
(`svp: error: …`, exit status 2); any other exception is a bug and keeps its traceback.

It is a ValueError so that pydantic validators may raise it (pydantic turns ValueErrors into validation
errors) and so that callers that catch ValueError keep working.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input (a config value, a path, an option): the message says what and where, in one line."""

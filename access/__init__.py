"""Access: roles, scopes, the read gateway, the access audit, the pseudonymised zone and subject access.

Importing the package declares its tables (``pupil_sessions_pseudo``, ``pupils_pseudo``,
``access_audit``) in ``storage.tables``. See docs/access.md.
"""

from access import audit as audit  # noqa: F401  (declares access_audit)
from access import pseudonymise as pseudonymise  # noqa: F401  (declares the pseudonymised tables)

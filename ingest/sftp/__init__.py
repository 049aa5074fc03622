"""The SFTP protocol layer: auth, chroot, path policy, open-handle tracking, typed events.

It knows nothing about epochs or CSV files. Layers above subscribe through
:class:`SFTPEventHandler` and ask :class:`OpenUploads` what is still being written.
"""

from ingest.sftp.events import (
    AllowAll,
    FanOut,
    IgnoreEvents,
    OpenUploads,
    PathRenamed,
    SessionClosed,
    SFTPEvent,
    SFTPEventHandler,
    UploadAborted,
    UploadFinished,
    UploadPolicy,
    UploadStarted,
)
from ingest.sftp.hostkeys import HostKey, load_or_create_host_keys
from ingest.sftp.paths import Denied
from ingest.sftp.service import DistrictDirectory, SFTPService

__all__ = [
    "AllowAll",
    "Denied",
    "DistrictDirectory",
    "FanOut",
    "HostKey",
    "IgnoreEvents",
    "OpenUploads",
    "PathRenamed",
    "SFTPEvent",
    "SFTPEventHandler",
    "SFTPService",
    "SessionClosed",
    "UploadAborted",
    "UploadFinished",
    "UploadPolicy",
    "UploadStarted",
    "load_or_create_host_keys",
]

"""The SFTP protocol layer: auth, chroot, path policy, open-handle tracking, typed events.

It knows nothing about epochs or CSV files. Layers above subscribe through
:class:`SFTPEventHandler` and ask :class:`UploadRegistry` what is still being written
and what was cut off.
"""

from ingest.sftp.events import (
    FanOut,
    OpenUpload,
    PathRenamed,
    RequestRefused,
    SessionClosed,
    SFTPEvent,
    SFTPEventHandler,
    UploadAborted,
    UploadFinished,
    UploadJournal,
    UploadPolicy,
    UploadRegistry,
    UploadStarted,
)
from ingest.sftp.hostkeys import HostKey, load_or_create_host_keys
from ingest.sftp.paths import Denied
from ingest.sftp.service import DistrictDirectory, SFTPService

__all__ = [
    "Denied",
    "DistrictDirectory",
    "FanOut",
    "HostKey",
    "OpenUpload",
    "PathRenamed",
    "RequestRefused",
    "SFTPEvent",
    "SFTPEventHandler",
    "SFTPService",
    "SessionClosed",
    "UploadAborted",
    "UploadFinished",
    "UploadJournal",
    "UploadPolicy",
    "UploadRegistry",
    "UploadStarted",
    "load_or_create_host_keys",
]

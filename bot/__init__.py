"""fillbot core: everything that turns attachments and options into finished images, without Discord."""

__version__ = "0.1.0"

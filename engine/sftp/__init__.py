"""Wharf's own SFTP server for trading partners: :mod:`engine.sftp.server`,
:mod:`engine.sftp.service`, the confinement in :mod:`engine.sftp.jail` and the YAML spec in
:mod:`engine.sftp.config`.

The SFTP *client* (for partners who host their own server) is :mod:`engine.net.sftp`.
"""

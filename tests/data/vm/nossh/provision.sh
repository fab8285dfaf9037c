#!/bin/sh
set -e
systemctl disable ssh.service ssh.socket 2>/dev/null || systemctl disable ssh.service

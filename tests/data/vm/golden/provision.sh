#!/bin/sh
set -e
echo "provisioned by the golden Vagrantfile" > /etc/buildenv-marker

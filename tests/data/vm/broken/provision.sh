#!/bin/sh
echo provision-step-output
echo "E: unable to locate package nonexistent" >&2
exit 3

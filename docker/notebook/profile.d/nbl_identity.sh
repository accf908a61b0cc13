# A claimed warm-pool session's identity (USER_ID and the rest) for JupyterLab's terminals, which start login shells:
# the same values nbl_pool_env gives every Python process (docker/notebook/nbl_pool_env.py). A cold-started
# session has them from Docker already.
if [ -z "${USER_ID:-}" ] && [ -r /run/nbl/identity.json ]; then
    eval "$(python3 -m nbl_pool_env)"
fi

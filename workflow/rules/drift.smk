# Stage: drift (see src/lnpeft and DESIGN).

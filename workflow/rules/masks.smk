# Stage: masks (see src/lnpeft and DESIGN).

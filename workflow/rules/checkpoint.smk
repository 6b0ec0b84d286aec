# Stage: checkpoint (see src/lnpeft and DESIGN).

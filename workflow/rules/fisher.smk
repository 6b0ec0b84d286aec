# Stage: fisher (see src/lnpeft and DESIGN).

# Stage: report (see src/lnpeft and DESIGN).
